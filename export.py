"""Run `yolodist export` from a checkout: `python export.py --help`."""

import sys

from yolodist.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
