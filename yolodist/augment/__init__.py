"""Pure image + box augmentations (numpy/cv2, BGR images); every random draw comes from an rng passed in.

``geometry`` (letterbox, random perspective, flips), ``color`` (HSV jitter), ``mosaic`` (mosaic4,
mixup) and ``policy`` (the train/val presets that compose them from a ``Hyp``).
"""
