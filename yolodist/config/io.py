"""YAML in and out for settings: hyperparameter files and the resolved run options."""

from __future__ import annotations

from pathlib import Path

import yaml

from yolodist.config.schema import Hyp
from yolodist.errors import BadConfig

HYP_DIR = Path(__file__).parent / "hyps"


def shipped_hyps() -> list[str]:
    return sorted(p.name for p in HYP_DIR.glob("*.yaml"))


def resolve_hyp(name_or_path: str | Path) -> Path:
    """A user path, or the name of a shipped hyperparameter file (``hyp.scratch-low.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (HYP_DIR / path.name, HYP_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise BadConfig(
        f"hyperparameter file {str(name_or_path)!r} not found; give a path or one of: {', '.join(shipped_hyps())}"
    )


def read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise BadConfig(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise BadConfig(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadConfig(f"{path} must hold a YAML mapping (key: value lines), not {type(data).__name__}")
    return data


def load_hyp(name_or_path: str | Path | dict) -> Hyp:
    if isinstance(name_or_path, dict):
        return Hyp.from_dict(name_or_path)
    path = resolve_hyp(name_or_path)
    return Hyp.from_dict(read_yaml(path), source=str(path))


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
