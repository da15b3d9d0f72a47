"""YoloDataset: verified images + labels -> augmented samples, keyed by (epoch, index).

All randomness of a sample comes from ``rng_for(seed, epoch, index)``, so what the model sees does not
depend on the number of workers or ranks. Files are read, never written, except the label cache and,
with ``cache_images="disk"``, one image cache file beside it (``labels/train.640-linear.imcache``),
never among the user's images. See ``imcache`` for the node-wide image cache.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yolodist.augment.policy import TrainAugment, ValAugment
from yolodist.config.schema import Hyp
from yolodist.data import imcache
from yolodist.data.cache import (
    ScanResult,
    apply_class_limit,
    cache_path_for,
    list_image_files,
    load_or_scan,
    report,
)
from yolodist.data.images import read_image, read_verified
from yolodist.data.imcache_file import ImageCache, Plan, make_plan, open_cache, resized_shape
from yolodist.utils.seed import rng_for

LOGGER = logging.getLogger(__name__)
# (img, labels, path, shapes, hsv): see YoloDataset
Sample = tuple[torch.Tensor, torch.Tensor, str, tuple | None, torch.Tensor | None]


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


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class YoloDataset(Dataset):
    """Images and YOLO labels from ``sources`` (folders, ``.txt`` lists or images).

    ``dataset[(epoch, i)]`` (or ``dataset[i]`` = epoch 0) -> (img uint8 ``[3, H, W]`` RGB in HWC memory, labels
    float32 ``[n, 6]`` = (0, cls, cx, cy, w, h) normalised to img, path, shapes, hsv) where shapes is
    ((h0, w0), ((h / h0, w / w0), (padw, padh))) or ``None`` for a mosaic, and hsv is None or, with
    ``defer_hsv``, the sample's HSV jitter not yet applied to img: its ``color.hsv_table`` as a uint8
    ``[256, 3]`` tensor (None when the hyperparameters have no jitter), for ``color_batch.hsv_batch``.

    Attributes: ``im_files``, ``labels`` (float32 ``[n, 5]`` cls+xywhn each), ``shapes`` (original (w, h)),
    ``stats`` (counts by reason), ``skipped`` ((path, reason) per unusable image), ``batch_shapes``
    ((h, w) per batch, rect only) and ``load_failures`` (this process's count of files that broke
    after the scan and were replaced by the next loadable index; ``broken_after_scan()`` lists them
    for this process and its loader workers together).

    With ``cache_images`` ("ram" or "disk"), ``prepare_cache()`` builds or opens the node's image
    cache; until it is called every image is decoded from its file.
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
        image_weights: bool = False,
        scaled_decode: bool = False,
        defer_hsv: bool = False,
    ) -> None:
        if cache_images not in (None, "ram", "disk"):
            raise ValueError(f"cache_images must be None, 'ram' or 'disk', got {cache_images!r}")
        self.img_size, self.augment, self.rect, self.seed = img_size, augment, rect, seed
        # Training images at least twice img_size may be shrunk inside the JPEG decoder (images.py).
        self.scaled_decode = scaled_decode and augment
        self.batch_size, self.stride, self.prefix = batch_size, stride, prefix
        self.hyp = hyp or Hyp()
        sources = [Path(s) for s in sources]
        self.cache_file = cache_path_for(sources)
        scan = load_or_scan(list_image_files(sources), self.cache_file, prefix=prefix, workers=workers)
        apply_class_limit(scan, nc)
        self.stats = report(scan, prefix)
        self._keep_usable(scan, single_cls)
        self.batch_shapes: np.ndarray | None = None
        if rect:
            self._sort_by_aspect(pad)
        self.policy = TrainAugment(self.hyp, img_size) if augment else ValAugment(img_size)
        self.defer_hsv = defer_hsv and augment
        self.cache_images = cache_images
        self.image_cache: ImageCache | None = None
        # (size, mtime) of each file as scanned: an unchanged file may take the fast decoder.
        self._stamps = [_stamp(f) for f in self.im_files]
        self._failed: set[int] = set()
        self.load_failures: Counter = Counter()
        # Which files broke after the scan, in shared memory: loader workers (forked) mark them here,
        # so the process that owns the loader can report them, and the other workers skip them.
        self._broken = torch.zeros(len(self.im_files), dtype=torch.bool).share_memory_()
        # --image-weights: the cumulative draw weights, in shared memory so that persistent workers see
        # each epoch's (mosaic partners follow them, as upstream's); all zeros = draw uniformly.
        self._draw_cdf = torch.zeros(len(self.im_files), dtype=torch.float64).share_memory_() if image_weights else None

    def _keep_usable(self, scan: ScanResult, single_cls: bool) -> None:
        """Take ``scan``'s usable images (files, labels, original shapes) and list the skipped ones."""
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

    def set_draw_weights(self, weights: np.ndarray) -> None:
        """Draw mosaic partners with these per-image weights from the next batch requested on."""
        if self._draw_cdf is None:
            raise RuntimeError("set_draw_weights needs a dataset made with image_weights=True")
        self._draw_cdf.copy_(torch.from_numpy(np.cumsum(np.asarray(weights, dtype=np.float64))))

    def _sort_by_aspect(self, pad: float) -> None:
        order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        self.batch_shapes = rect_batch_shapes(self.shapes, self.batch_size, self.img_size, self.stride, pad)

    def __len__(self) -> int:
        return len(self.im_files)

    # ------------------------------------------------------------------ loading
    @property
    def _interp(self) -> str:
        """How images are brought to img_size (part of the image cache's key)."""
        if not self.augment:
            return "area"
        return "jpeg-dct+linear" if self.scaled_decode else "linear"

    def cache_plan(self) -> tuple[Path, Plan]:
        """Where this dataset's image cache lives and its layout (``cache_images`` must be set)."""
        plan = make_plan(self.im_files, self.shapes, self.img_size, self._interp)
        if self.cache_images == "ram":
            return imcache.ram_path(plan), plan
        return imcache.disk_path(self.cache_file, self.img_size, self._interp), plan

    def prepare_cache(self, build: bool = True, threads: int | None = None) -> None:
        """Use the node's image cache: ``build`` (one process per node) reuses or makes it, and says so;
        the other processes then open what it made, silently, or decode from the files if it made none."""
        if self.cache_images is None or not len(self):
            return
        path, plan = self.cache_plan()
        if not build:
            self.image_cache = open_cache(path, plan)
            return
        threads = threads or len(os.sched_getaffinity(0))
        in_memory = self.cache_images == "ram"
        load = lambda i: self._decode_resize(i)[0]  # noqa: E731 (the cache stores pixels only)
        self.image_cache = imcache.prepare(path, plan, load, in_memory=in_memory, threads=threads, prefix=self.prefix)

    def _decode_resize(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        f = self.im_files[i]
        stamp = _stamp(f)
        if stamp is not None and stamp == self._stamps[i]:
            img = read_verified(f, self.img_size if self.scaled_decode else None)
            w0, h0 = (int(x) for x in self.shapes[i])  # the scan's: the decoder may have shrunk the image
        else:  # changed since the scan: the strict decoder (it reports truncation)
            img = read_image(f)
            h0, w0 = img.shape[:2]
        h, w = resized_shape(h0, w0, self.img_size)
        if (h, w) != img.shape[:2]:
            # INTER_AREA gives the cleanest downscale for evaluation; training keeps upstream's LINEAR.
            interp = cv2.INTER_LINEAR if (self.augment or h > h0) else cv2.INTER_AREA
            img = cv2.resize(img, (w, h), interpolation=interp)
        return img, (h0, w0)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` resized so its long side is ``img_size`` (BGR) and its original (h0, w0).

        From the image cache the array is a read-only view: augmentations never write into it.
        """
        if self.image_cache is not None:
            hit = self.image_cache.get(i)
            if hit is not None:
                return hit
        return self._decode_resize(i)

    def _load_usable(self, i: int) -> tuple[int, np.ndarray, tuple[int, int]]:
        """Load ``i``, or, if it broke after the scan, the next index that loads (deterministically)."""
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            if j in self._failed or self._broken[j]:
                continue
            try:
                img, hw0 = self.load_image(j)
                return j, img, hw0
            except Exception as e:  # never raise in a worker: one bad file must not kill a DDP rank
                self._failed.add(j)
                self._broken[j] = True
                self.load_failures[type(e).__name__] += 1
                why = getattr(e, "reason", None) or e  # ImageReadError's reason; its text repeats the path
                LOGGER.warning(f"{self.prefix}cannot load {self.im_files[j]} ({why}); using another image")
        raise RuntimeError(f"{self.prefix}no image of the dataset can be loaded any more")

    def broken_after_scan(self) -> list[str]:
        """Files that could not be loaded after the scan (and were replaced), here or in any loader worker."""
        return [self.im_files[i] for i in torch.nonzero(self._broken).flatten().tolist()]

    # ------------------------------------------------------------------ samples
    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
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
        cdf = self._draw_cdf.numpy() if self._draw_cdf is not None and self._draw_cdf[-1] > 0 else None
        args = (int(index), load_fn, rng)
        hsv = None
        if self.defer_hsv:
            img, labels, shapes, table = self.policy.before_colour(*args, n=len(self), shape=shape, partners=cdf)
            hsv = None if table is None else torch.from_numpy(table)
        else:
            img, labels, shapes = self.policy(*args, n=len(self), shape=shape, partners=cdf)
        out = np.zeros((len(labels), 6), dtype=np.float32)
        out[:, 1:] = labels
        # [3, H, W] RGB over HWC memory (channels-last): no transposition here, and collate stacks the
        # batch channels-last, the layout the model trains in.
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # also takes a region of a larger array (rows strided)
        return torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(out), self.im_files[actual], shapes, hsv
