"""Architecture guards that import-linter cannot express (STYLE.md habit 15).

1. Only yolodist/distributed/ touches torch.distributed, DataParallel/DDP/SyncBatchNorm, init_process_group
   or the launcher's environment variables (import-linter only forbids top-level packages).
2. Nothing edits sys.path, in the package or in the root scripts: the layout makes it unnecessary.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "yolodist"
DIST = PACKAGE / "distributed"

FORBIDDEN_NAMES = {"DistributedDataParallel", "DataParallel", "SyncBatchNorm", "init_process_group"}
LAUNCHER_VARIABLES = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
}
SYS_PATH_EDITS = {"append", "insert", "extend", "remove", "pop", "clear", "__setitem__", "__iadd__"}


def _dotted(node: ast.AST) -> str | None:
    """'torch.distributed.barrier' for the expression torch.distributed.barrier; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _is_distributed_module(name: str) -> bool:
    return name == "torch.distributed" or name.startswith("torch.distributed.")


def dist_violations(source: str) -> list[str]:
    """What in ``source`` only yolodist/distributed may use, as 'line: what' strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if _is_distributed_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if _is_distributed_module(module) or (module == "torch" and "distributed" in names):
                found.append(f"{line}: from {module} import ...")
            found += [f"{line}: from {module} import {n}" for n in sorted(names & FORBIDDEN_NAMES)]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if node.attr in FORBIDDEN_NAMES or (dotted is not None and _is_distributed_module(dotted)):
                found.append(f"{line}: {dotted or node.attr}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if text in LAUNCHER_VARIABLES or _is_distributed_module(text):
                found.append(f"{line}: string {node.value!r}")
    # torch.distributed.barrier is also seen as its inner torch.distributed: report each line once.
    return sorted(set(found), key=lambda item: int(item.split(":")[0]))


def sys_path_edits(source: str) -> list[str]:
    """Mutations of sys.path in ``source``: calls of its methods, assignments, augmented assignments."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in SYS_PATH_EDITS and _dotted(node.value) == "sys.path":
            found.append(f"{line}: sys.path.{node.attr}")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                inner = target.value if isinstance(target, ast.Subscript) else target
                if _dotted(inner) == "sys.path":
                    found.append(f"{line}: assignment to sys.path")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            found.append(f"{line}: from sys import path")
    return found


def _package_files_outside_dist() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if DIST not in p.parents)


def test_the_scan_sees_the_package():
    files = _package_files_outside_dist()
    assert len(files) > 10 and any(p.parts[-2:] == ("models", "yolo.py") for p in files)
    assert not any(DIST in p.parents for p in files)
    # The rule is live on real files: the one package allowed these names does use them.
    assert dist_violations((DIST / "session.py").read_text(encoding="utf-8"))
    assert dist_violations((DIST / "env.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _package_files_outside_dist(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_dist_touches_torch_distributed_and_launcher_variables(path):
    found = dist_violations(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} must leave this to yolodist/distributed: {found}"


@pytest.mark.parametrize(
    "path",
    sorted([*PACKAGE.rglob("*.py"), *ROOT.glob("*.py")]),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_sys_path_edits(path):
    found = sys_path_edits(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} edits sys.path: {found}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch.distributed as dist",
        "import torch.distributed.elastic",
        "from torch import distributed",
        "from torch.distributed import barrier",
        "import torch\ntorch.distributed.barrier()",
        "from torch.nn.parallel import DistributedDataParallel",
        "import torch.nn as nn\nm = nn.DataParallel(m)",
        "m = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m)",
        "dist.init_process_group('gloo')",
        "import os\nrank = int(os.environ['RANK'])",
        "import os\nos.getenv('LOCAL_RANK', -1)",
        "import os\nos.environ.get(' MASTER_PORT ')",
        "import importlib\nimportlib.import_module('torch.distributed')",
        "x = TORCHELASTIC_RESTART_COUNT = 'TORCHELASTIC_RESTART_COUNT'",
    ],
)
def test_the_dist_rule_catches(snippet):
    assert dist_violations(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        '"""Docstrings may say torch.distributed and RANK in prose."""',
        "# comments: torch.distributed.barrier()",
        "from yolodist.distributed import collectives\ncollectives.barrier(env)",
        "world = env.world_size\nrank = env.rank",
        "x = {'rank': 0, 'Rank': 1}",
        "import torch.nn as nn\nbn = nn.BatchNorm2d(3)",
    ],
)
def test_the_dist_rule_lets_ordinary_code_pass(snippet):
    assert not dist_violations(snippet)


@pytest.mark.parametrize(
    ("snippet", "edits"),
    [
        ("import sys\nsys.path.append('..')", True),
        ("import sys\nsys.path.insert(0, str(ROOT))", True),
        ("import sys\nsys.path += ['x']", True),
        ("import sys\nsys.path = ['x']", True),
        ("import sys\nsys.path[0] = 'x'", True),
        ("from sys import path", True),
        ("import sys\nprint(sys.path)", False),
        ("import sys\nsys.exit(main())", False),
    ],
)
def test_the_sys_path_rule(snippet, edits):
    assert bool(sys_path_edits(snippet)) is edits
