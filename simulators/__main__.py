"""`python -m simulators`: the same as `millwright simulate`."""

import sys

from simulators.cli import main

raise SystemExit(main(sys.argv[1:]))
