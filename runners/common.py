"""Shared glue for the Hydra entry points: turn user errors into one paragraph and a non-zero exit."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from rgap.errors import UserInputError

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR_EXIT = 2


def exit_on_user_error(fn: F) -> F:
    """Print a ``UserInputError`` as one wrapped paragraph on stderr and exit with code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            print(textwrap.fill(f"error: {exc}", width=100, break_long_words=False, break_on_hyphens=False),
                  file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)

    return wrapper  # type: ignore[return-value]
