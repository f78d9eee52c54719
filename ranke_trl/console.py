"""What the example scripts and `ranke-trl` print: RankE's own log lines, and set-up errors as one named line.

A script's set-up (recipe, dataset, models, trainer) either works or fails with an error that names the problem and
the fix (`RecipeError`, and the `ValueError`/`TypeError`/`OSError` the checks and loaders raise). A traceback adds
nothing to those, and under `accelerate launch` every process would print it again, so `named_setup_errors` prints
the message once and exits with status 2. Errors during training keep their tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

SETUP_ERRORS = (ValueError, TypeError, OSError)  # OSError: a missing file, or a Hub id that cannot be fetched


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def enable_console_logging(level: int = logging.INFO) -> None:
    """Show `ranke_trl`'s own log lines (start-up summary, warnings) on the main process, without timestamps."""
    logger = logging.getLogger("ranke_trl")
    if not any(getattr(h, "_ranke_console", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._ranke_console = True
        logger.addHandler(handler)
    logger.setLevel(level if _is_main_process() else logging.WARNING)
    logger.propagate = False


@contextlib.contextmanager
def named_setup_errors():
    """Inside the block, a set-up error prints `error: <its message>` once (main process) and exits with status 2."""
    try:
        yield
    except SETUP_ERRORS as err:
        if _is_main_process():
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
