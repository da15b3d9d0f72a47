"""Checkpoint files: their layout, writing them safely, reading ours and upstream's, resuming from them.

``state``    the layout: the ``TrainingState`` dataclass, its schema version, ``build_checkpoint``
``files``    atomic writes that keep the previous generation, weights-only loads with readable errors
``upstream`` upstream YOLOv5 ``.pt`` files of pickled modules, read without running their code
``weights``  "weights from this file" for train, val, detect and export; matching-weight transfer
``restore``  which file a run starts from, and ``restore``: the one place that applies a resume

Nothing here imports the training engine, so inference and export load weights without it.
"""
