"""Typed exceptions. Runners turn ``UnsupportedError`` into ``status=unsupported`` rows
and ``UserInputError`` into a one-paragraph message with a non-zero exit code."""

from __future__ import annotations


class RGapBenchError(Exception):
    """Base class of every error this project raises on purpose."""


class UserInputError(RGapBenchError):
    """Bad configuration or input from the user (unknown name, bad index, missing files)."""


class OutputWriteError(UserInputError):
    """A result file or directory could not be written (full disk, read-only directory, ...)."""


class DatasetNotFoundError(UserInputError):
    """Dataset files are missing and could not be downloaded."""


class UnsupportedError(RGapBenchError):
    """An attack cannot handle this model/input combination (recorded as ``status=unsupported``)."""


class UnsupportedLayerError(UnsupportedError):
    """A layer or activation has no inverse in R-GAP (ReLU, pooling, batch norm, ...)."""


class UnsupportedInputError(UnsupportedError):
    """The input cannot be attacked this way (e.g. a conv network with batch size > 1)."""


class CheckpointMismatchError(UserInputError):
    """A checkpoint's model, input shape or head does not fit the model a trial or analysis asks for."""


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or repr(exc)
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
