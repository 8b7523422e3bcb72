"""Shared glue for the Hydra entry points: user errors as one paragraph and exit 2, Ctrl-C as one line.

* ``exit_on_user_error`` wraps a ``@hydra.main`` task: a ``UserInputError`` (bad option, missing file, a result
  that could not be written) is printed as one wrapped paragraph on stderr, the run directory Hydra made for the
  rejected run is removed again when nothing but Hydra's own bookkeeping is in it, and the process exits with 2.
* ``cli`` runs an entry point so that Ctrl-C anywhere (in a trial or in Hydra) ends with one line and exit 130.

Hydra's own errors (an unknown config key, an override it cannot parse, a missing config group option) are
printed by Hydra and exit with 1; see the README's "Errors and exit codes".
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rgap.core.errors import UserInputError

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


def print_user_error(exc: BaseException) -> None:
    """``error: <message>`` wrapped at 100 columns on stderr."""
    print(textwrap.fill(f"error: {exc}", width=100, break_long_words=False, break_on_hyphens=False),
          file=sys.stderr, flush=True)


def exit_on_user_error(fn: F) -> F:
    """Print a ``UserInputError`` as one paragraph, drop the run directory it left empty, exit with code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            print_user_error(exc)
            remove_bookkeeping_only_run_dir()
            sys.exit(USER_ERROR_EXIT)

    return wrapper  # type: ignore[return-value]


def remove_bookkeeping_only_run_dir() -> None:
    """Remove the current Hydra output directory if it holds only what Hydra wrote (``.hydra/``, the job log)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        out = Path(hydra_cfg.runtime.output_dir)
        log_name = f"{hydra_cfg.job.name}.log"
    except Exception:  # not inside a Hydra run: nothing to clean
        return
    if not out.is_dir() or any(p.name not in (".hydra", log_name) for p in out.iterdir()):
        return
    shutil.rmtree(out / ".hydra", ignore_errors=True)
    (out / log_name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty after all: leave it
        out.rmdir()


def cli(main: Callable[[], Any], interrupted: Callable[[], str] = lambda: "interrupted") -> None:
    """Run ``main``; Ctrl-C prints ``interrupted()`` as one line (no traceback) and exits with 130."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"\n{interrupted()}", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
