"""`python -m templater`: the same command as `edgestack template`."""

import sys

from templater.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m templater"))
