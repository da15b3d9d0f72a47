"""`yolodist export` / `python export.py`."""

from yolodist.cli.exit import not_yet

main = not_yet("export", "export.py")
