"""Training ends as upstream's does: best.pt, as released, validated per class, on one process or every rank."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT, concurrently, run_script
from tests.distributed.test_ddp import torchrun

pytestmark = pytest.mark.dist

# train.py with best.pt replaced, as it is released, by a model of known results (a fresh model trained
# for one epoch scores nothing, so a validation of the wrong weights would look the same).
SWAP_BEST = """
import runpy, shutil, sys
from yolodist.engine import trainer

released = trainer.release_best

def swap(run):
    released(run)
    shutil.copyfile({source!r}, run.save_dir / "weights" / "best.pt")

trainer.release_best = swap
sys.argv = [{train!r}, *sys.argv[1:]]
runpy.run_path({train!r}, run_name="__main__")
"""


def _all_row(out: str, after: str) -> str:
    """The 'all' row of the first results table printed after the line holding ``after``."""
    tail = out[out.index(after) :]
    return re.search(r"^\s+all\s+\d+\s+\d+.*$", tail, re.M).group(0).strip()


@pytest.mark.timeout(420)
def test_training_ends_validating_best_pt_as_val_py_does(tmp_path, tiny_shapes, calibrated_checkpoint):
    wrapper = tmp_path / "swap_best.py"
    wrapper.write_text(SWAP_BEST.format(source=str(calibrated_checkpoint), train=str(ROOT / "train.py")))
    common = [str(wrapper), "--data", str(tiny_shapes), "--cfg", "yolov5n.yaml", "--weights", ""]
    common += ["--img", "128", "--batch", "8", "--epochs", "1", "--workers", "0", "--device", "cpu"]
    common += ["--project", str(tmp_path / "runs")]
    val = [str(ROOT / "val.py"), "--weights", str(calibrated_checkpoint), "--data", str(tiny_shapes)]
    val += ["--img", "128", "--batch-size", "16", "--device", "cpu", "--project", str(tmp_path / "val")]
    one, two, reference = concurrently(
        lambda: run_script([*common, "--name", "one"], cwd=tmp_path),
        lambda: torchrun([*common, "--name", "two"], cwd=tmp_path),
        lambda: run_script(val, cwd=tmp_path),
    )
    for proc in (one, two, reference):
        assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _all_row(reference.stdout + reference.stderr, "Class")
    assert float(expected.split()[5]) > 0  # mAP50: a result a wrong model would not give
    for name, proc in (("one", one), ("two", two)):
        out = proc.stdout + proc.stderr
        best = tmp_path / "runs" / name / "weights" / "best.pt"
        assert out.count(f"Validating {best}...") == 1  # on rank 0 only
        assert out.index("epochs completed") < out.index("Validating") < out.index("Results saved to")
        assert _all_row(out, "Validating") == expected, name
        # The per-class rows and the plots are best.pt's, after its table.
        assert re.search(r"^\s+circle\s+\d+", out[out.index("Validating") :], re.M), name
        assert (tmp_path / "runs" / name / "confusion_matrix.png").is_file()
