"""YoloDataset: verified images + labels -> augmented samples, keyed by (epoch, index).

All randomness of a sample comes from ``rng_for(seed, epoch, index)``, so what the model sees does not
depend on the number of workers or ranks. Files are read, never written, except the label cache and,
with ``cache_images="disk"``, ``.npy`` copies of the decoded images in a ``<cache stem>_npy/`` folder
beside the label cache (e.g. ``labels/train_npy/``), never among the user's images.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolodist.augment.policy import TrainAugment, ValAugment
from yolodist.config.schema import Hyp
from yolodist.data.cache import apply_class_limit, cache_path_for, list_image_files, load_or_scan, report
from yolodist.data.images import read_image
from yolodist.utils.seed import rng_for

LOGGER = logging.getLogger(__name__)


def rect_batch_shapes(wh: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float) -> np.ndarray:
    """Per-batch letterbox shapes (h, w), int ``[nb, 2]``, for images already sorted by aspect ratio.

    Each batch gets the smallest stride-multiple shape holding its most extreme aspect ratio at
    ``img_size`` on the long side: ceil(shape * img_size / stride + pad) * stride, as upstream.
    """
    n = len(wh)
    bi = np.arange(n) // batch_size
    nb = int(bi[-1]) + 1 if n else 0
    ar = wh[:, 1] / wh[:, 0]  # h / w
    shapes = np.ones((nb, 2))
    for i in range(nb):
        ari = ar[bi == i]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            shapes[i] = [hi, 1]
        elif lo > 1:
            shapes[i] = [1, 1 / lo]
    return np.ceil(shapes * img_size / stride + pad).astype(int) * stride


class YoloDataset(Dataset):
    """Images and YOLO labels from ``sources`` (folders, ``.txt`` lists or images).

    ``dataset[(epoch, i)]`` (or ``dataset[i]`` = epoch 0) -> (img uint8 ``[3, H, W]`` RGB, labels
    float32 ``[n, 6]`` = (0, cls, cx, cy, w, h) normalised to img, path, shapes) where shapes is
    ((h0, w0), ((h / h0, w / w0), (padw, padh))) or ``None`` for a mosaic.

    Attributes: ``im_files``, ``labels`` (float32 ``[n, 5]`` cls+xywhn each), ``shapes`` (original (w, h)),
    ``stats`` (counts by reason), ``skipped`` ((path, reason) per unusable image), ``batch_shapes``
    ((h, w) per batch, rect only) and ``load_failures`` (this process's count of files that broke
    after the scan and were replaced by the next loadable index).
    """

    def __init__(  # noqa: PLR0913 (the upstream-shaped keyword set the engine passes)
        self,
        sources: list[Path],
        img_size: int = 640,
        *,
        augment: bool = False,
        hyp: Hyp | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.0,
        single_cls: bool = False,
        cache_images: str | None = None,
        seed: int = 0,
        nc: int | None = None,
        prefix: str = "",
        workers: int = 8,
    ) -> None:
        if cache_images not in (None, "ram", "disk"):
            raise ValueError(f"cache_images must be None, 'ram' or 'disk', got {cache_images!r}")
        self.img_size, self.augment, self.rect, self.seed = img_size, augment, rect, seed
        self.batch_size, self.stride, self.prefix = batch_size, stride, prefix
        self.hyp = hyp or Hyp()
        sources = [Path(s) for s in sources]
        self.cache_file = cache_path_for(sources)
        scan = load_or_scan(list_image_files(sources), self.cache_file, prefix=prefix, workers=workers)
        apply_class_limit(scan, nc)
        self.stats = report(scan, prefix)
        # (path, reason[: detail]) of every skipped image, for the engine to write into the run folder.
        self.skipped = [
            (f, f"{p}: {d}" if d else p)
            for f, p, d in zip(scan.im_files, scan.problems, scan.details, strict=True)
            if p
        ]
        keep = np.flatnonzero(scan.usable())
        self.im_files = [scan.im_files[i] for i in keep]
        self.labels = [scan.labels[i].copy() for i in keep]
        self.shapes = scan.shapes[keep].astype(np.int64)  # original (w, h)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.batch_shapes: np.ndarray | None = None
        if rect:
            self._sort_by_aspect(pad)
        self.policy = TrainAugment(self.hyp, img_size) if augment else ValAugment(img_size)
        self.cache_images = cache_images
        self.npy_dir = self.cache_file.parent / f"{self.cache_file.stem}_npy"
        self._ram: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        self._failed: set[int] = set()
        self.load_failures: Counter = Counter()

    def _sort_by_aspect(self, pad: float) -> None:
        order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        self.batch_shapes = rect_batch_shapes(self.shapes, self.batch_size, self.img_size, self.stride, pad)

    def __len__(self) -> int:
        return len(self.im_files)

    # ------------------------------------------------------------------ loading
    def _npy_path(self, i: int) -> Path:
        f = self.im_files[i]
        st = os.stat(f)  # size + mtime in the name: an edited image never reuses a stale copy
        tag = hashlib.sha1(f"{f}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return self.npy_dir / f"{Path(f).stem}_{tag}.npy"

    def _decode(self, i: int) -> np.ndarray:
        if self.cache_images != "disk":
            return read_image(self.im_files[i])
        npy = self._npy_path(i)
        try:
            return np.load(npy, allow_pickle=False)
        except (OSError, ValueError):
            pass
        img = read_image(self.im_files[i])
        try:  # atomic, so a concurrent reader (another worker or rank) never sees half a file
            npy.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=npy.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, img)
            os.replace(tmp, npy)
        except OSError as e:
            LOGGER.warning(f"{self.prefix}cannot write image cache {npy} ({e}); decoding the image instead")
        return img

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized so its long side is ``img_size`` (BGR) and its original (h0, w0)."""
        if i in self._ram:
            return self._ram[i]
        img = self._decode(i)
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            # INTER_AREA gives the cleanest downscale for evaluation; training keeps upstream's LINEAR.
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        if self.cache_images == "ram":
            self._ram[i] = (img, (h0, w0))  # filled lazily, per worker process
        return img, (h0, w0)

    def _load_usable(self, i: int) -> tuple[int, np.ndarray, tuple[int, int]]:
        """Load ``i``, or, if it broke after the scan, the next index that loads (deterministically)."""
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            if j in self._failed:
                continue
            try:
                img, hw0 = self.load_image(j)
                return j, img, hw0
            except Exception as e:  # never raise in a worker: one bad file must not kill a DDP rank
                self._failed.add(j)
                self.load_failures[type(e).__name__] += 1
                why = getattr(e, "reason", None) or e  # ImageReadError's reason; its text repeats the path
                LOGGER.warning(f"{self.prefix}cannot load {self.im_files[j]} ({why}); using another image")
        raise RuntimeError(f"{self.prefix}no image of the dataset can be loaded any more")

    # ------------------------------------------------------------------ samples
    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = rng_for(self.seed, int(epoch), int(index))
        first = self._load_usable(int(index))
        actual = first[0]

        def load_fn(i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
            j, img, hw0 = first if i == index else self._load_usable(int(i))
            return img, self.labels[j], hw0

        shape = None
        if self.batch_shapes is not None:
            # Rect batches are contiguous blocks of B sorted samples (see ShardedBatchSampler).
            shape = tuple(int(v) for v in self.batch_shapes[int(index) // self.batch_size])
        img, labels, shapes = self.policy(int(index), load_fn, rng, n=len(self), shape=shape)
        out = torch.zeros((len(labels), 6), dtype=torch.float32)
        if len(labels):
            out[:, 1:] = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        chw = np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(chw), out, self.im_files[actual], shapes
