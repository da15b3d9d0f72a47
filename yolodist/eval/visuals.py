"""The plots a validation leaves behind (shared by val.py and training), never failing the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from yolodist.eval import plots
from yolodist.eval.metrics import ConfusionMatrix
from yolodist.eval.validator import ValResult
from yolodist.ops.boxes import xyxy2xywh

PLOTTED_BATCHES = 3


def batch_plotter(save_dir: Path, names: list[str]) -> Callable:
    """An ``on_batch`` hook drawing the first batches with labels and predictions (val_batch{i}_*.jpg)."""

    def on_batch(i: int, imgs: torch.Tensor, targets: torch.Tensor, paths: list[str], preds: list) -> None:
        if i >= PLOTTED_BATCHES:
            return
        images = (imgs.float() * 255).round().byte().cpu()
        rows = [
            torch.cat([torch.full((len(p), 1), j), p[:, 5:6].cpu(), xyxy2xywh(p[:, :4]).cpu(), p[:, 4:5].cpu()], 1)
            for j, p in enumerate(preds)
        ]
        pred_rows = torch.cat(rows) if rows else torch.zeros(0, 7)
        plots.safe_plot(plots.plot_images, images, targets.cpu(), paths, names, save_dir / f"val_batch{i}_labels.jpg")
        plots.safe_plot(plots.plot_images, images, pred_rows, paths, names, save_dir / f"val_batch{i}_pred.jpg")

    return on_batch


def plot_validation(result: ValResult, names: list[str], save_dir: Path) -> None:
    """confusion_matrix.png and the PR, F1, P and R curves of a validation result."""
    confusion = ConfusionMatrix(len(names))
    for rec in result.records.values():
        confusion.process_batch(rec.pred, rec.labels)
    plots.safe_plot(plots.plot_confusion_matrix, confusion.matrix, names, save_dir / "confusion_matrix.png")
    ap = result.ap
    if ap is None:
        return
    curve_names = [names[c] if c < len(names) else str(c) for c in ap.classes]
    plots.safe_plot(plots.plot_pr_curve, ap.px, ap.py, ap.ap[:, 0], curve_names, save_dir / "PR_curve.png")
    for curve, label, file in ((ap.f1_curve, "F1", "F1"), (ap.p_curve, "Precision", "P"), (ap.r_curve, "Recall", "R")):
        plots.safe_plot(plots.plot_metric_curve, ap.px, curve, curve_names, save_dir / f"{file}_curve.png", label)
