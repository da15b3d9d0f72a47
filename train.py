"""Run `yolodist train` from a checkout: `python train.py --help`."""

import sys

from yolodist.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
