"""Build objects from Hydra config groups (``conf/<group>/*.yaml``) with clear errors.

Every group entry has a ``name`` (for rows and file names) and a ``_target_`` (the callable that builds
it); the remaining keys are its keyword arguments. Typos and missing values become ``UserInputError``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from rgap.core.errors import RGapBenchError, UserInputError, short_error

T = TypeVar("T")


def _is_hydra_key(key: str) -> bool:
    return key.startswith("_") and key.endswith("_")


def locate_callable(path: str) -> Any:
    """Import ``package.module.attr`` (quietly, unlike ``hydra.utils.get_method`` which logs errors)."""
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"'{path}' is not a dotted path")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as exc:
            module = ".".join(parts[:split])
            if exc.name and not (module + ".").startswith(exc.name + "."):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        if not callable(obj):
            raise ValueError(f"'{path}' is not callable")
        return obj
    raise ImportError(f"no module found for '{path}'")


def instantiate_group(cfg: Mapping, group: str, expected: type[T], **kwargs: Any) -> T:
    """Instantiate one ``conf/<group>/*.yaml`` entry, passing ``kwargs`` on top of its keys.

    ``name`` is dropped; unknown keys, missing (``???``) values, unimportable targets and builders that
    return the wrong type raise ``UserInputError`` naming the ``<group>.<key>`` and the valid options.
    Errors of this project raised inside the builder propagate unchanged.
    """
    import hydra.utils
    from hydra.errors import InstantiationException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        missing = [str(k) for k in node if OmegaConf.is_missing(node, k)]
        if missing:
            raise UserInputError(
                f"{group.capitalize()} option(s) "
                + ", ".join(f"{group}.{k}" for k in missing)
                + f" must be set (they are '???' in the config), e.g. {group}.{missing[0]}=..."
            )
        container = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise UserInputError(f"Invalid {group} config: {short_error(exc, 400)}") from exc
    assert isinstance(container, dict)
    container.pop("name", None)
    target = container.get("_target_")
    if not target:
        raise UserInputError(f"The {group} config has no _target_ key naming the callable that builds it.")
    try:
        fn = locate_callable(str(target))
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserInputError(f"{group}._target_={target} could not be imported ({short_error(exc)}).") from exc
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [str(k) for k in container if not _is_hydra_key(str(k)) and k not in params]
        if unknown:
            valid = ", ".join(p for p in params if p not in ("self", "cls") and p not in kwargs)
            passed = f" ({', '.join(kwargs)} are passed by the harness itself)" if kwargs else ""
            raise UserInputError(
                f"Unknown {group} option(s) {', '.join(group + '.' + k for k in unknown)} for {target}; "
                + (f"valid options are: {valid}{passed}." if valid else f"it takes no options{passed}.")
                + f" Remove the others, or accept them in {target}'s signature."
            )
    try:
        result = hydra.utils.instantiate(container, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, RGapBenchError):
            raise cause from None
        raise UserInputError(f"Could not build the {group} from {target}: {short_error(exc, 400)}") from exc
    if not isinstance(result, expected):
        raise UserInputError(f"{group}._target_={target} returned {type(result).__name__}, not {expected.__name__}.")
    return result
