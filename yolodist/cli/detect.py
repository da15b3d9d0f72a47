"""`yolodist detect` / `python detect.py`."""

from yolodist.cli.exit import not_yet

main = not_yet("detect", "detect.py")
