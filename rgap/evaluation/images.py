"""Writing image grids to PNG and rescaling reconstructions for display."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from rgap.core.atomic import atomic_save

GRID_PADDING = 2


def save_image_grid(
    images: Tensor, path: str | os.PathLike, nrow: int | None = None, upscale: int = 4
) -> None:
    """Save ``[B,C,H,W]`` images (C = 1 or 3; a single ``[C,H,W]`` image also works) as one PNG grid.

    Values are clamped to ``[0, 1]`` (NaN shown as 0). Each image is first enlarged ``upscale`` times
    with nearest-neighbour interpolation so 32x32 images are visible, then tiled with
    ``torchvision.utils.make_grid`` (``nrow`` images per row, default ``ceil(sqrt(B))``; 2-pixel white
    padding). The PNG is ``rows * (H*upscale + 2) + 2`` pixels high and
    ``cols * (W*upscale + 2) + 2`` wide; grayscale batches are written in PIL mode ``L``, colour as RGB.
    Parent folders are created; the file is written atomically.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected [B,C,H,W] images with C in (1, 3), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("cannot save an empty batch of images")
    if int(upscale) < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    upscale = int(upscale)
    from torchvision.utils import make_grid  # torchvision costs ~2 s to import: only when images are saved
    batch = images.shape[0]
    if nrow is None:
        nrow = math.ceil(math.sqrt(batch))
    if nrow < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")

    x = torch.nan_to_num(images.detach().to(device="cpu", dtype=torch.float32), nan=0.0).clamp(0.0, 1.0)
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    grid = make_grid(x, nrow=nrow, padding=GRID_PADDING, pad_value=1.0)  # [3, H', W'] even for C=1
    if batch == 1:  # make_grid returns a lone image unpadded; pad it like any other grid
        grid = torch.nn.functional.pad(grid.expand(3, -1, -1), (GRID_PADDING,) * 4, value=1.0)
    array = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if images.shape[1] == 1:
        pil = Image.fromarray(np.ascontiguousarray(array[:, :, 0]))  # uint8 HxW -> "L"
    else:
        pil = Image.fromarray(np.ascontiguousarray(array))  # uint8 HxWx3 -> "RGB"
    atomic_save(Path(path), lambda tmp: pil.save(tmp, format="PNG"))


def rescale_minmax(images: Tensor) -> Tensor:
    """Stretch each image of a ``[B,...]`` batch to ``[0, 1]``: ``(x - min) / (max - min)`` per image.

    Min and max are taken over all channels and pixels of that image; a constant image maps to zeros.
    This is the reference code's "rescale reconstructed" display option, except that the reference
    divides by ``max`` instead of ``max - min`` (a known bug that leaves the range below 1 whenever
    ``min > 0`` and overshoots when ``min < 0``); we use ``max - min``.
    """
    if images.ndim < 2:
        raise ValueError(f"expected a batch of images [B,...], got shape {tuple(images.shape)}")
    if images.numel() == 0:
        return images.clone()
    flat = images.reshape(images.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(images.shape)
