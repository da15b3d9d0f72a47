"""The one place that turns exceptions into exit codes and one-line messages."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

from yolodist.errors import Interrupted, UserError

EXIT_INTERRUPTED = 130
EXIT_BUG = 1  # what the interpreter returns for an uncaught exception


def run_command(command: str, body: Callable[[], int | None]) -> int:
    """Run ``body`` and return its exit code.

    A ``UserError`` becomes one actionable line on stderr instead of a traceback; any other exception
    (a bug) keeps its traceback and exits 1, as an uncaught one would.
    """
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
    except Exception:
        # Printed here, not by the interpreter, which would keep the traceback, and with it every frame's
        # objects (a DDP model holds the process group), until interpreter finalisation, where tearing down
        # gloo's threads can abort the process.
        traceback.print_exc()
        return EXIT_BUG
