"""Checkpoint files: their layout, writing them safely, reading ours and upstream's, resuming from them.

``upstream`` upstream YOLOv5 ``.pt`` files of pickled modules, read without running their code
"""
