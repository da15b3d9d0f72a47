"""Rank-aware logging: the main rank logs INFO, other ranks only WARNING and above with a prefix."""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "yolodist"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] " if rank > 0 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def setup_logging(rank: int = 0, verbose: bool = True) -> None:
    """Configure the ``yolodist`` logger once per process.

    Rank 0 shows INFO (or WARNING when not ``verbose``); other ranks show WARNING and above, each
    line prefixed with ``[rank N]``, so an error on rank 3 is seen exactly once, from rank 3.
    """
    logger = logging.getLogger("yolodist")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr if rank > 0 else sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter("%(rank_prefix)s%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 and verbose else logging.WARNING)
    logger.propagate = False


def colorstr(text: str, *styles: str) -> str:
    """Bold/colour ``text`` for terminals, as upstream's console output does; plain when not a TTY."""
    if not sys.stdout.isatty():
        return text
    codes = {"bold": "1", "blue": "34", "green": "32", "red": "31", "yellow": "33"}
    prefix = "".join(f"\033[{codes[s]}m" for s in styles if s in codes) or "\033[1m"
    return f"{prefix}{text}\033[0m"
