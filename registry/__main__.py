"""`python -m registry`: the agent (same as `edgestack agent`)."""

import sys

from registry.agent import main

sys.exit(main(sys.argv[1:]))
