"""Helpers for real multi-process tests: free ports and torchrun launches with hard timeouts.

Every launch carries a unique marker in its environment, which its ranks inherit: a hung or
timed-out job is killed whole (launcher and ranks; torchrun starts each rank in its own session,
so a process-group kill would miss them) instead of leaving processes behind. One retry is made
when the port was taken between choosing it and binding it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "YOLODIST_TEST_LAUNCH"


def free_port() -> int:
    """A port that was free a moment ago (bind(0) on the loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (Linux /proc; others' processes are unreadable)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_marked(marker: str) -> None:
    for pid in _marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def _run_once(command: list[str], cwd: Path, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    marker = uuid.uuid4().hex
    env = {**env, MARKER: marker}
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_marked(marker)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(command[:6])} ... did not finish in {timeout:g} s\n{err[-3000:]}")
    finally:
        _kill_marked(marker)  # ranks orphaned by a launcher that died early
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def run_torchrun(
    script_args: Sequence[str],
    nproc: int = 2,
    launcher_args: Sequence[str] = (),
    cwd: Path = ROOT,
    timeout: float = 90,
    standalone: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node N [static 127.0.0.1:port | --standalone] ...``.

    OMP_NUM_THREADS=1 per process; the whole process group is killed after ``timeout`` seconds.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for _ in range(2):
        where = ["--standalone"] if standalone else ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            *where,
            *launcher_args,
            *script_args,
        ]
        result = _run_once(command, cwd, timeout, env)
        if result.returncode == 0 or "EADDRINUSE" not in result.stderr:
            return result
    return result


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_torchrun`, as a fixture."""
    return run_torchrun


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, tiny_shapes) -> dict:
    """last.pt of a clean 3-epoch run on 2 ranks, through the same fault wrapper (the same code path).

    The reference of every restart test (test_faults, test_kill); one run per session.
    """
    import torch

    # Imported here: test_faults imports this module, and holds the launch helpers the fault tests share.
    from tests.distributed.test_faults import WRAPPER, Job, finish, launched, restart_flags, torchrun_command

    root = tmp_path_factory.mktemp("uninterrupted")
    clean = [WRAPPER, "--rank", "1", "--", *restart_flags(tiny_shapes, root, "ref")]
    with launched() as marker:
        ref = Job(torchrun_command(*clean, nproc=2, port=free_port()), root / "logs", "ref", marker)
        finish([ref], timeout=100)
    assert ref.proc.returncode == 0, ref.output[-3000:]
    return torch.load(root / "ref" / "weights" / "last.pt", weights_only=True)
