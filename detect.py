"""Run `yolodist detect` from a checkout: `python detect.py --help`."""

import sys

from yolodist.cli.detect import main

if __name__ == "__main__":
    sys.exit(main())
