"""Reading, verifying, caching, sampling and batching detection data (YOLO label format).

``spec`` reads a dataset YAML, ``images``/``labels`` verify one file each, ``cache`` scans a whole
image set once, ``dataset`` serves samples, ``sampler`` shards batches over ranks (given as ints) and
``loader`` collates. Nothing here touches ``torch.distributed``.
"""
