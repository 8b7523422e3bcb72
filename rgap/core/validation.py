"""Typed reading of option values: every command-line option is checked once, with one clear error.

Hydra hands values over as YAML read them: ``seed=1.5`` arrives as a float, ``overwrite=flase`` as the string
``"flase"``, ``index=abc`` as a string. Python's ``int()`` and ``bool()`` would silently truncate or accept
them; the functions here refuse them with a :class:`~rgap.core.errors.UserInputError` that names the option, the bad
value and what is valid.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from rgap.core.errors import UserInputError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _what(meaning: str) -> str:
    return f" ({meaning})" if meaning else ""


def as_bool(value: Any, key: str, meaning: str = "") -> bool:
    """``value`` if it is a real boolean (``true``/``false`` on the command line), else ``UserInputError``.

    ``meaning`` (every function here takes it) says in a few words what the option is, for the message.
    """
    if isinstance(value, bool):
        return value
    raise UserInputError(f"{key}={value!r} is not a boolean{_what(meaning)}; use {key}=true or {key}=false.")


def as_int(value: Any, key: str, minimum: int | None = None, maximum: int | None = None, meaning: str = "") -> int:
    """``value`` as an int; floats are accepted only when integral (``2.0``), strings and booleans never."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    bounds = _bounds_text(minimum, maximum)
    if number is None:
        raise UserInputError(f"{key}={value!r} is not an integer{_what(meaning)}; give a whole number{bounds}.")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise UserInputError(f"{key}={number} is out of range{_what(meaning)}; give a whole number{bounds}.")
    return number


def as_float(value: Any, key: str, minimum: float | None = None, maximum: float | None = None,
             positive: bool = False, meaning: str = "") -> float:
    """``value`` as a finite float (ints accepted); NaN, infinities, strings and booleans are refused."""
    bounds = " > 0" if positive else _bounds_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserInputError(f"{key}={value!r} is not a finite number{_what(meaning)}; give a number{bounds}.")
    number = float(value)
    if (positive and number <= 0) or (minimum is not None and number < minimum) or \
            (maximum is not None and number > maximum):
        raise UserInputError(f"{key}={number!r} is out of range{_what(meaning)}; give a number{bounds}.")
    return number


def as_choice(value: Any, key: str, choices: Collection[str], meaning: str = "") -> str:
    """``value`` if it is one of ``choices`` (compared as text), else ``UserInputError`` listing them."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text not in choices:
        raise UserInputError(f"{key}={value!r} is not valid{_what(meaning)}; valid choices: {', '.join(choices)}.")
    return text


def as_optional_int(value: Any, key: str, minimum: int | None = None) -> int | None:
    """``None`` (``null``) or :func:`as_int`."""
    return None if value is None else as_int(value, key, minimum)


def as_path(value: Any, key: str) -> Path:
    """A path option with ``~`` expanded (the shell does not expand it after ``key=``)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise UserInputError(f"{key}={value!r} is not a path; give a file or directory path.")
    return Path(os.path.expanduser(os.fspath(value)))


def as_shape(value: Any, key: str, dims: Sequence[int] = (3,)) -> tuple[int, ...]:
    """A list of positive integers with one of the lengths in ``dims`` (e.g. ``[3,32,32]``)."""
    example = "[3,32,32]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) not in dims:
        raise UserInputError(f"{key}={value!r} is not a shape; give {'/'.join(map(str, dims))} positive "
                             f"integers in brackets, e.g. {key}={example} (channels, height, width).")
    return tuple(as_int(v, f"{key}[{i}]", minimum=1) for i, v in enumerate(value))


def as_name(value: Any, key: str) -> str:
    """A single directory name (letters, digits, ``.``, ``_``, ``-``; no path separators, no ``..``)."""
    text = str(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _SAFE_NAME.match(text) or ".." in text:
        raise UserInputError(
            f"{key}={value!r} is not a valid name; use letters, digits, '.', '_' and '-' only (it names one "
            "directory, so no '/', no '..', no leading '.'), e.g. {key}=my_sweep.".replace("{key}", key)
        )
    return text


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def as_device(value: Any, key: str = "device") -> Any:
    """A ``torch.device`` for ``cpu`` or ``cuda[:N]``; CUDA on a machine without it is a ``UserInputError``."""
    import torch

    try:
        device = torch.device(str(value))
    except RuntimeError as exc:
        raise UserInputError(f"{key}={value!r} is not a valid device; valid choices: cpu, cuda, cuda:N.") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"{key}={value!r} is not supported; valid choices: cpu, cuda, cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"{key}={value!r} was requested but CUDA is not available here; use {key}=cpu.")
    return device
