"""Progress on a terminal or in a log file: redrawn bars for people, plain lines for batch jobs.

A tqdm bar redraws itself with carriage returns; in a SLURM or nohup log that becomes one huge
line of overwritten text. So bars are drawn only when the stream they go to is a terminal, and
everything else gets plain lines. ``YOLODIST_PROGRESS=bar|lines`` forces either choice (a log that
is watched through ``tail -f`` may still want lines; a terminal multiplexer that is not seen as a
terminal may want bars). Upstream YOLOv5 has no such switch; this one is ours.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

LOGGER = logging.getLogger(__name__)

PROGRESS_VARIABLE = "YOLODIST_PROGRESS"
ProgressMode = Literal["bar", "lines"]
_warned: set[str] = set()


def progress_mode(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> ProgressMode:
    """Bars when ``stream`` (default: stderr, where tqdm draws) is a terminal, else lines.

    ``YOLODIST_PROGRESS`` in ``environ`` (default: the process environment) overrides the choice.
    """
    environ = os.environ if environ is None else environ
    forced = environ.get(PROGRESS_VARIABLE, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced  # type: ignore[return-value]
    if forced and forced not in _warned:
        _warned.add(forced)
        LOGGER.warning(f"{PROGRESS_VARIABLE}={forced!r} is neither 'bar' nor 'lines'; choosing by the terminal")
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a replaced stream without isatty, or a closed one
        return "lines"


def bars_wanted(stream: TextIO | None = None) -> bool:
    """Whether a tqdm bar on ``stream`` (default: stderr) would be seen as a bar rather than as log noise."""
    return progress_mode(stream) == "bar"
