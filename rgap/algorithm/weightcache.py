"""A small per-process cache of quantities that depend only on a layer's weights and geometry.

R-GAP attacks many images of one model: ``A^T A`` of a small convolution, or spectral bounds of it, are the
same for all of them. Entries are keyed by the layer geometry and a digest of the weight values (so a
changed weight is a different key; quantities of the geometry alone by the geometry), and the least recently used
entries are dropped beyond ``MAX_ENTRIES``.
Callers get the stored object itself: they must not modify it (clone first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")

#: At most this many cached values per process.
MAX_ENTRIES = 16

_CACHE: OrderedDict[tuple, object] = OrderedDict()


def weight_key(weight: torch.Tensor, *geometry: Hashable) -> tuple:
    """A key for ``weight`` (shape, dtype, device, digest of its values) and any extra geometry."""
    data = weight.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
    return (tuple(weight.shape), str(weight.dtype), str(weight.device), digest, *geometry)


def cached(key: tuple, compute: Callable[[], T]) -> T:
    """The value stored under ``key``, computed by ``compute()`` on first use."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]  # type: ignore[return-value]
    value = compute()
    _CACHE[key] = value
    if len(_CACHE) > MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return value


def clear() -> None:
    """Drop every cached value."""
    _CACHE.clear()
