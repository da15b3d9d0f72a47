"""Run `yolodist val` from a checkout: `python val.py --help`."""

import sys

from yolodist.cli.val import main

if __name__ == "__main__":
    sys.exit(main())
