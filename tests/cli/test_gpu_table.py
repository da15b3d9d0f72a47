"""bench/gpu_table.py on a JUnit report that pytest really wrote: a row per test with its result and figures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap

import pytest

from tests.conftest import ROOT, run_script

TINY_TESTS = textwrap.dedent(
    """
    import pytest

    def test_pass(record_property):
        record_property("max_diff", 1.5e-05)
        record_property("images_per_s", 1234.5)
        record_property("skipped_updates", 0)

    def test_fail(record_property):
        record_property("skipped_updates", 2)
        assert 1 == 2, "two updates skipped"

    def test_skip():
        pytest.skip("onnxruntime has no CUDAExecutionProvider")

    @pytest.mark.skipif(True, reason="needs two CUDA GPUs")
    def test_marked_skip():
        pass

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")

    def test_error(broken):
        pass
    """
)
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"
SCALING = {
    "results": [{"ranks": 1, "batch": 64, "images_per_s": 812.34, "efficiency": 1.0, "rounds": [{"wall_s": 41.26}]}]
}


def table_rows(text: str) -> dict[str, tuple[str, str]]:
    """name -> (result, figure) from the printed table (header, rule, rows, summary line); each row's
    seconds must be a number or "-"."""
    lines = text.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["check", "result", "s", "figure"], lines[0]
    assert set(lines[1]) == {"-"}
    rows = {}
    for line in lines[2:-1]:
        name, result, seconds, *figure = re.split(r"\s{2,}", line, maxsplit=3)
        assert seconds == "-" or float(seconds) >= 0, line
        rows[name] = (result, figure[0] if figure else "")
    return rows


def junit_report(tmp_path, *select: str):
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    report = tmp_path / "report.xml"
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tiny.py", "--junitxml", str(report)]
    proc = run_script([*args, "-o", "junit_family=xunit1", *select], cwd=tmp_path)
    assert proc.returncode in (0, 1, 5), proc.stdout[-2000:]  # 1: test_fail failed, as it should; 5: none chosen
    return report


def gpu_table(tmp_path, *args: str):
    return run_script([str(ROOT / "bench" / "gpu_table.py"), *args], cwd=tmp_path)


def test_every_check_gets_a_row_with_its_result_and_figure(tmp_path):
    report = junit_report(tmp_path)
    scaling = tmp_path / "scaling.json"
    scaling.write_text(json.dumps(SCALING))
    out = tmp_path / "table.txt"
    args = ["--junit", str(report), "--scaling", str(scaling), "--elapsed", "250", "--budget", "300"]
    proc = gpu_table(tmp_path, *args, "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # two checks failed
    assert out.read_text() == proc.stdout
    assert table_rows(proc.stdout) == {
        "test_pass": ("pass", "max_diff=1.5e-05, images_per_s=1234.5, skipped_updates=0"),
        "test_fail": ("fail", "skipped_updates=2, AssertionError: two updates skipped"),
        "test_skip": ("skip", "onnxruntime has no CUDAExecutionProvider"),
        "test_marked_skip": ("skip", "needs two CUDA GPUs"),
        "test_error": ("fail", 'failed on setup with "RuntimeError: fixture broke"'),
        "ddp_scaling 1 GPU(s), batch 64": ("pass", "812.3 images/s, scaling efficiency 100%"),
        "total time": ("pass", "budget 300 s"),
    }
    assert proc.stdout.strip().splitlines()[-1] == "3 passed, 2 failed, 2 skipped"
    times = {line.split("  ")[0]: line for line in proc.stdout.splitlines()}
    assert "  41.3  " in times["ddp_scaling 1 GPU(s), batch 64"] and "  250.0  " in times["total time"]


def test_a_clean_run_exits_0_and_missing_results_or_overtime_fail(tmp_path):
    report = junit_report(tmp_path, "-k", "pass or skip")
    clean = gpu_table(tmp_path, "--junit", str(report))
    assert clean.returncode == 0, clean.stdout
    assert {result for result, _ in table_rows(clean.stdout).values()} == {"pass", "skip"}
    late = gpu_table(tmp_path, "--junit", str(report), "--scaling", "missing.json", "--elapsed", "301")
    assert late.returncode == 1
    rows = table_rows(late.stdout)
    assert rows["ddp_scaling"][0] == "fail" and "missing.json" in rows["ddp_scaling"][1]
    assert rows["total time"] == ("fail", "budget 300 s")
    nothing = gpu_table(tmp_path, "--junit", str(tmp_path / "absent.xml"))
    assert nothing.returncode == 1 and table_rows(nothing.stdout)["tests"][0] == "fail"
    empty = gpu_table(tmp_path, "--junit", str(junit_report(tmp_path, "-k", "no_such_test")))
    assert empty.returncode == 1 and table_rows(empty.stdout)["tests"][0] == "fail"  # nothing ran: not a pass


def test_gpu_check_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); bash -n passed")
    proc = subprocess.run(["shellcheck", str(GPU_CHECK)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
