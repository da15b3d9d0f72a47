"""`yolodist val` / `python val.py`."""

from yolodist.cli.exit import not_yet

main = not_yet("val", "val.py")
