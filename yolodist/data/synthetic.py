"""The built-in 'shapes' detection dataset, generated on first use so that training works offline.

The images are drawn by ``shapes_render``. Layout: ``shapes.yaml`` (path, train, val, nc, names),
``meta.json`` (generator version and parameters, written last), ``images/{train,val}/000000.jpg`` and
``labels/{train,val}/000000.txt`` (rows "cls cx cy w h", normalised, 6 decimals; empty for background
images). Same seed and parameters, same bytes: JPEGs at fixed quality.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

import cv2
import yaml

from yolodist.data.shapes_render import SHAPES_NAMES, SPLITS, render, tight_box
from yolodist.errors import BadData

LOGGER = logging.getLogger(__name__)

GENERATOR = "yolodist-shapes"
GENERATOR_VERSION = 1
YAML_NAME = "shapes.yaml"
META_NAME = "meta.json"
# Fixed quality for byte-identical output; 4:4:4 keeps chroma at full resolution, since a saturated
# shape can have the background's luminance and would otherwise show only through blurred chroma.
_JPEG = (cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
ENV_VAR = "YOLODIST_DATASETS_DIR"


def default_datasets_dir() -> Path:
    """``$YOLODIST_DATASETS_DIR`` if set, else ``./datasets`` under the current working directory."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser().absolute() if value else Path.cwd() / "datasets"


def ensure_shapes(
    root: Path | None = None, *, n_train: int = 1024, n_val: int = 256, img_size: int = 192, seed: int = 0
) -> Path:
    """Generate the 'shapes' dataset into ``root`` unless a complete one with these parameters is there.

    ``root`` defaults to ``default_datasets_dir() / "shapes"``. Returns the dataset YAML path. A set
    made with other parameters or another generator version, or missing files, is regenerated.
    Generation happens in a temporary sibling directory that is renamed into place, so an interrupted
    run never looks complete and concurrent callers end up sharing one finished copy.
    """
    _check_params(n_train, n_val, img_size, seed)
    root = Path(root if root is not None else default_datasets_dir() / "shapes").expanduser().absolute()
    params = {"n_train": n_train, "n_val": n_val, "img_size": img_size, "seed": seed}
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "params": params,
        "names": list(SHAPES_NAMES),
    }
    if not _is_complete(root, meta):
        _check_replaceable(root)
        _generate_atomically(root, meta)
    elif _yaml_root(root) != str(root):  # the directory was moved: only the YAML's path is stale
        _write_yaml(root, root)
    return root / YAML_NAME


def _check_params(n_train: int, n_val: int, img_size: int, seed: int) -> None:
    limits = {"n_train": (n_train, 1, 10**7), "n_val": (n_val, 1, 10**7), "img_size": (img_size, 64, 4096)}
    for name, (value, low, high) in {**limits, "seed": (seed, 0, 2**63 - 1)}.items():
        if not isinstance(value, int) or not low <= value <= high:
            raise BadData(f"the 'shapes' dataset needs an integer {name} in {low}..{high}, got {value!r}")


def _is_complete(root: Path, meta: dict) -> bool:
    """Whether ``root`` holds a finished dataset made with exactly ``meta`` (files listed, not read)."""
    if _read_meta(root) != meta or not (root / YAML_NAME).is_file():
        return False
    try:
        for split in SPLITS:
            for folder, suffix in (("images", ".jpg"), ("labels", ".txt")):
                expected = {f"{i:06d}{suffix}" for i in range(meta["params"][f"n_{split}"])}
                if set(os.listdir(root / folder / split)) != expected:
                    return False
    except OSError:
        return False
    return True


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a directory that this generator did not write (it may be the user's data)."""
    empty = root.is_dir() and not any(root.iterdir())
    if root.exists() and not empty and (_read_meta(root) or {}).get("generator") != GENERATOR:
        raise BadData(
            f"{root} exists but is not a complete yolodist 'shapes' dataset; delete it or set "
            f"{ENV_VAR} to another directory"
        )


def _generate_atomically(root: Path, meta: dict) -> None:
    params = meta["params"]
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(root)
    tmp = root.with_name(f".{root.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    LOGGER.info(
        "generating the built-in 'shapes' dataset (%d train + %d val images, %d px, seed %d) into %s",
        params["n_train"], params["n_val"], params["img_size"], params["seed"], root,
    )  # fmt: skip
    try:
        _write_dataset(tmp, root, meta)
        _swap_in(tmp, root, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_dataset(out: Path, root: Path, meta: dict) -> None:
    """Write every image and label into ``out``; the YAML names ``root``; meta.json goes last."""
    params = meta["params"]
    for split, split_id in SPLITS.items():
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index in range(params[f"n_{split}"]):
            image, owner, objects = render(index, split_id, params["img_size"], params["seed"])
            path = images / f"{index:06d}.jpg"
            if not cv2.imwrite(str(path), image, _JPEG):
                raise BadData(f"could not write {path}; check free disk space and permissions")
            boxes = [(obj.cls, tight_box(owner == k)) for k, obj in enumerate(objects)]
            rows = "".join(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cls, (cx, cy, w, h) in boxes)
            (labels / f"{index:06d}.txt").write_text(rows, encoding="utf-8")
    _write_yaml(out, root)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _write_yaml(directory: Path, root: Path) -> None:
    """Write ``directory/shapes.yaml`` pointing at ``root``, atomically (temp file + rename)."""
    names = dict(enumerate(SHAPES_NAMES))
    spec = {"path": str(root), "train": "images/train", "val": "images/val", "nc": len(names), "names": names}
    header = "# yolodist built-in 'shapes' dataset: generated, and regenerated on demand if deleted.\n"
    tmp = directory / f".{YAML_NAME}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    os.replace(tmp, directory / YAML_NAME)


def _yaml_root(root: Path) -> str | None:
    try:
        return (yaml.safe_load((root / YAML_NAME).read_text(encoding="utf-8")) or {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _swap_in(tmp: Path, root: Path, meta: dict) -> None:
    """Rename ``tmp`` to ``root``; if another process finished an identical set first, keep that one."""
    for _ in range(3):
        if _is_complete(root, meta):
            return
        if root.exists():
            # A stale or damaged set: move it aside first, since a rename onto a non-empty dir fails.
            trash = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):  # another process may have moved it already
                os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
            return
        except OSError:
            continue  # the final directory appeared meanwhile; check it again
    raise BadData(f"could not move the generated 'shapes' dataset into {root}; is another job writing there?")


def _remove_dead_temporaries(root: Path) -> None:
    """Delete temp dirs left by killed generations on this host (their process no longer exists)."""
    prefix = f".{root.name}.tmp-{socket.gethostname()}-"
    for path in root.parent.iterdir() if os.name == "posix" else []:  # os.kill(pid, 0) probes on POSIX only
        pid = path.name[len(prefix) :].split("-")[0]
        if path.name.startswith(prefix) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except PermissionError:
                pass  # alive, owned by another user
