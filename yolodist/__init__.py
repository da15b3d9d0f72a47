"""yolodist: YOLOv5 training that scales from one CPU to many machines."""

__version__ = "0.1.0"
