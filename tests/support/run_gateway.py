"""`millwright run` with the test-only counter driver registered (for subprocess tests)."""

import sys

from gateway.cli import main
from tests.support.counter_driver import register

if __name__ == "__main__":
    register()
    raise SystemExit(main(sys.argv[1:]))
