"""`python -m edgestack` = the `edgestack` console script."""

import sys

from edgestack.cli import main

sys.exit(main())
