"""``python -m distribute``: the command line (see :mod:`distribute.cli`)."""

import sys

from distribute.cli import main

if __name__ == "__main__":
    sys.exit(main())
