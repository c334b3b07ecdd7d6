"""`python -m tlkit.train`: the command line (see `tlkit.cli`); the Python API is `tlkit.fit`."""

import sys

from tlkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
