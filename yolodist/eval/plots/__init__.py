"""The plots upstream YOLOv5 writes, as plain functions on NumPy arrays.

PR_curve.png, P/R/F1_curve.png (``curves``), confusion_matrix.png (``confusion``), the
``*_batch*.jpg`` mosaics (``batches``), results.png (``results``) and labels.jpg (``labels``), with
upstream's file names and look; ``common`` writes them.

Why it is built this way:
- matplotlib, cv2 and the atomic writer are imported inside the functions, so importing this package
  costs nothing on ranks and runs that never plot (``--noplots``).
- Figures are ``matplotlib.figure.Figure`` objects rendered by their own Agg canvas, never pyplot:
  pyplot keeps a global figure registry and a process-wide backend, which would leak memory over a
  long run and interfere with anyone else in the process (a notebook, another thread).
- Every file goes through a temp file and ``os.replace``, so a kill mid-write leaves the previous plot.
- A plot is never worth a failed run: callers wrap calls in ``safe_plot``.
"""

from yolodist.eval.plots.batches import plot_images
from yolodist.eval.plots.common import safe_plot
from yolodist.eval.plots.confusion import normalize_confusion, plot_confusion_matrix
from yolodist.eval.plots.curves import plot_metric_curve, plot_pr_curve
from yolodist.eval.plots.labels import plot_labels
from yolodist.eval.plots.results import RESULTS_PANELS, gaussian_smooth, plot_results, read_results_csv

__all__ = [
    "RESULTS_PANELS",
    "gaussian_smooth",
    "normalize_confusion",
    "plot_confusion_matrix",
    "plot_images",
    "plot_labels",
    "plot_metric_curve",
    "plot_pr_curve",
    "plot_results",
    "read_results_csv",
    "safe_plot",
]
