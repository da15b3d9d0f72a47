"""The one place that turns exceptions into exit codes and one-line messages."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from yolodist.errors import Interrupted, UserError

EXIT_INTERRUPTED = 130


def run_command(command: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a ``UserError`` becomes one actionable line on stderr instead of a traceback."""
    try:
        return int(body() or 0)
    except Interrupted as e:  # not a mistake: the message says how to resume
        print(f"yolodist {command}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except UserError as e:
        logging.getLogger("yolodist").debug("user error", exc_info=True)
        print(f"yolodist {command}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"yolodist {command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def not_yet(command: str, what: str) -> Callable[[list[str] | None], int]:
    """A command whose implementation has not landed: exit non-zero with one clear sentence."""

    def main(argv: list[str] | None = None) -> int:
        print(f"yolodist {command}: {what} is not available in this version yet.", file=sys.stderr)
        return 2

    return main
