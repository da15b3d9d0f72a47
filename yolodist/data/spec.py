"""Dataset YAML (upstream YOLOv5 format) -> ``DataSpec`` with resolved, checked paths.

Keys: ``path`` (dataset root), ``train``, ``val``, optional ``test``, ``names`` (list, or dict
{0: name, 1: name, ...}), optional ``nc`` and optional ``download``. ``train``/``val``/``test`` are a
folder, a ``.txt`` list of image paths, a single image, or a list of these, relative to ``path``.

When a split is missing and ``download`` is a URL or a list of URLs (zip or tar archives), each archive
is fetched into the datasets folder (the folder holding ``path``) and unpacked there if its members
all sit in one folder named like ``path`` (upstream's layout, e.g. ``coco128.zip`` -> ``coco128/``),
else into ``path`` itself. A ``download`` that is a script (``bash ...`` or Python code) is never run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from yolodist.errors import BadData

LOGGER = logging.getLogger(__name__)

SHAPES_ALIASES = ("shapes", "shapes.yaml")


@dataclass(frozen=True)
class DataSpec:
    """A dataset description with absolute paths.

    ``train``/``val``/``test`` hold folders, ``.txt`` list files or single images (what the YAML
    names, resolved); ``names[i]`` is the name of class ``i`` and ``nc == len(names)``.
    """

    yaml_file: Path
    path: Path
    train: list[Path]
    val: list[Path]
    test: list[Path] | None
    names: list[str]
    nc: int
    download: str | None


def load_data_spec(data: str | Path | None = None) -> DataSpec:
    """Read and check a dataset YAML; ``None``, ``"shapes"`` or ``"shapes.yaml"`` = the built-in set."""
    if data is None or (isinstance(data, str) and data in SHAPES_ALIASES):
        from yolodist.data.synthetic import ensure_shapes  # lazy: generating data is a side effect

        data = ensure_shapes()
    yaml_file = Path(data).expanduser()
    if not yaml_file.is_file():
        raise BadData(f"dataset YAML {yaml_file} not found: check the --data path (or use --data shapes).")
    try:
        raw = yaml.safe_load(yaml_file.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadData(f"dataset YAML {yaml_file} cannot be parsed ({_first_line(e)}); fix its syntax.") from e
    if not isinstance(raw, dict):
        raise BadData(f"dataset YAML {yaml_file} must be a mapping with keys path, train, val and names.")
    for key in ("names", "train", "val"):
        if raw.get(key) in (None, "", []):
            raise BadData(f"dataset YAML {yaml_file} has no '{key}' entry; add it (see YOLOv5's coco128.yaml).")
    yaml_file = yaml_file.resolve()
    names = _parse_names(raw["names"], raw.get("nc"), yaml_file)
    root = _resolve_root(raw.get("path"), yaml_file)
    urls, download = _parse_download(raw.get("download"), yaml_file)
    keys = [k for k in ("train", "val", "test") if raw.get(k)]
    missing = next(((k, p) for k in keys for p in _split_candidates(raw[k], root) if not p.exists()), None)
    fetched = None
    if missing and download:
        if urls is None:
            key, path = missing
            raise BadData(
                f"dataset YAML {yaml_file}: {key} path {path} does not exist and the dataset must be downloaded "
                f"first, but its download is a script and yolodist does not run code from dataset files: run it "
                f"yourself ({_shorten(download)}) and rerun."
            )
        _fetch(urls, root, yaml_file)
        root, fetched = _resolve_root(raw.get("path"), yaml_file), download
    splits = {k: _resolve_split(raw[k], k, root, yaml_file, fetched) for k in ("train", "val")}
    test = _resolve_split(raw["test"], "test", root, yaml_file, fetched) if raw.get("test") else None
    return DataSpec(yaml_file, root, splits["train"], splits["val"], test, names, len(names), download)


def _parse_download(value: object, yaml_file: Path) -> tuple[list[str] | None, str | None]:
    """(the URLs to fetch, or None for a script; the entry as text, or None when there is none)."""
    from yolodist.utils.download import is_url  # lazy: only YAMLs with a download entry need it

    if value in (None, "", []):
        return None, None
    if isinstance(value, list | tuple) and all(isinstance(v, str) and is_url(v) for v in value):
        urls = [v.strip() for v in value]
        return urls, " ".join(urls)
    if isinstance(value, str):
        text = value.strip()
        return ([text] if is_url(text) else None), text
    raise BadData(f"dataset YAML {yaml_file}: 'download' must be a URL, a list of URLs or a script, got {value!r}.")


def _shorten(script: str, limit: int = 80) -> str:
    line = script.strip().splitlines()[0]
    more = len(script.strip().splitlines()) > 1 or len(line) > limit
    return f"download: {line[:limit]}{' ...' if more else ''}"


def _fetch(urls: list[str], root: Path, yaml_file: Path) -> None:
    """Download and unpack each archive so that ``root`` (the YAML's ``path``) exists afterwards."""
    from yolodist.utils.archive import extract, member_names  # lazy: rarely needed
    from yolodist.utils.download import download, url_basename

    datasets_dir = root.parent
    for url in urls:
        archive = datasets_dir / (url_basename(url) or "download")
        if archive == root:  # a URL without a suffix, named like the dataset folder it unpacks to
            archive = archive.with_name(f"{archive.name}.download")
        if archive.is_file():
            # Downloads are atomic, so a file here is complete: an earlier run's, or put here by hand
            # as the offline message says.
            LOGGER.info(f"Dataset {yaml_file.name}: using {archive} (already downloaded)")
        else:
            LOGGER.info(f"Dataset {yaml_file.name} not found: downloading {url} to {archive}")
            download(url, archive, desc=archive.name)
        tops = {PurePosixPath(n.replace("\\", "/")).parts[:1] for n in member_names(archive)} - {()}
        target = datasets_dir if tops == {(root.name,)} else root
        LOGGER.info(f"Unpacking {archive.name} into {target}")
        extract(archive, target)
        archive.unlink(missing_ok=True)
    LOGGER.info(f"Dataset download success, saved to {root}")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _parse_names(names: object, nc: object, yaml_file: Path) -> list[str]:
    if isinstance(names, dict):
        keys = list(names)
        ints = all(isinstance(k, int) and not isinstance(k, bool) for k in keys)
        if not ints or sorted(keys) != list(range(len(keys))):
            raise BadData(
                f"dataset YAML {yaml_file}: 'names' keys must be the integers 0..{len(keys) - 1} "
                f"with no gaps, got {keys[:10]}."
            )
        keys = sorted(keys)
        out = [str(names[k]) for k in keys]
    elif isinstance(names, list | tuple):
        out = [str(n) for n in names]
    else:
        raise BadData(f"dataset YAML {yaml_file}: 'names' must be a list of class names or a {{0: name}} map.")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc != len(out)):
        raise BadData(
            f"dataset YAML {yaml_file}: nc is {nc} but {len(out)} names are given; make them agree or drop nc."
        )
    return out


def _resolve_root(path: object, yaml_file: Path) -> Path:
    """The dataset root: absolute as given, else relative to the YAML's folder, else to the current dir."""
    if path in (None, ""):
        return yaml_file.parent
    root = Path(str(path)).expanduser()
    if root.is_absolute():
        return root
    beside_yaml = (yaml_file.parent / root).resolve()
    if beside_yaml.exists():
        return beside_yaml
    from_cwd = root.resolve()
    return from_cwd if from_cwd.exists() else beside_yaml


def _split_candidates(value: object, root: Path) -> list[Path]:
    """Where each entry of a split is looked for (it may not exist)."""
    entries = value if isinstance(value, list | tuple) else [value]
    out = []
    for entry in entries:
        p = Path(str(entry)).expanduser()
        p = p if p.is_absolute() else (root / p)
        if not p.exists() and str(entry).startswith("../"):
            p = root / str(entry)[3:]  # upstream's fallback for YAMLs written relative to a parent folder
        out.append(p)
    return out


def _resolve_split(value: object, key: str, root: Path, yaml_file: Path, fetched: str | None) -> list[Path]:
    entries = value if isinstance(value, list | tuple) else [value]
    out = []
    for entry, p in zip(entries, _split_candidates(value, root), strict=True):
        if not p.exists():
            if fetched:
                raise BadData(
                    f"dataset YAML {yaml_file}: {key} path {p} does not exist even after downloading {fetched}; "
                    f"fix 'path' or the {key} entry to match what the archive holds."
                )
            raise BadData(
                f"dataset YAML {yaml_file}: {key} path {p} does not exist (looked for '{entry}' under "
                f"{root}); fix 'path' or the {key} entry."
            )
        out.append(p.resolve())
    return out
