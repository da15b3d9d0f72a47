"""Pure image + box augmentations (numpy/cv2, BGR images); every random draw comes from an rng passed in.

``geometry`` (letterbox, random perspective, flips), ``color`` (HSV jitter), ``mosaic`` (mosaic4,
mixup), ``canvas`` (a mosaic's canvas kept as tiles, painted where a warp reads it) and ``policy``
(the train/val presets that compose them from a ``Hyp``).
"""
