"""run_command: user errors in one line, bugs with their traceback, and nothing of a failed body kept alive."""

from __future__ import annotations

import weakref

from yolodist.cli.exit import EXIT_BUG, run_command
from yolodist.errors import BadFlag


class _Held:
    """Stands for what a failing frame holds, such as a DDP model and through it the process group."""


def test_a_bug_prints_its_traceback_and_frees_the_failed_frames(capsys):
    held: list[weakref.ref] = []

    def body() -> int:
        model = _Held()
        held.append(weakref.ref(model))
        raise RuntimeError("a bug")

    assert run_command("train", body) == EXIT_BUG == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.rstrip().endswith("RuntimeError: a bug")
    assert held[0]() is None  # freed now, not at interpreter exit


def test_a_user_error_is_one_line_with_its_exit_code(capsys):
    def body() -> int:
        raise BadFlag("--batch must be positive")

    assert run_command("val", body) == BadFlag("x").exit_code != 0
    assert capsys.readouterr().err == "yolodist val: error: --batch must be positive\n"


def test_success_returns_the_bodys_code():
    assert run_command("detect", lambda: None) == 0
    assert run_command("detect", lambda: 3) == 3
