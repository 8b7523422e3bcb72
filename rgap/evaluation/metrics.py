"""Image-quality metrics of a reconstruction against the original: MSE, PSNR, SSIM and LPIPS.

All scores are of the image a user would see: the reconstruction is clamped to ``[0, 1]`` before
scoring (the original is expected to already lie in ``[0, 1]``). MSE, PSNR and SSIM are computed in
float64 on the CPU with a data range of 1. A metric that cannot be computed is ``None`` and
:attr:`MetricResult.reasons` says why; nothing here raises for bad numbers in a reconstruction.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

from rgap.core.errors import UserInputError, short_error

METRIC_NAMES = ("mse", "psnr", "ssim", "lpips")

NONFINITE_REASON = "reconstruction contains NaN/inf"
NOT_REQUESTED_REASON = "LPIPS not requested"

# Backbone file that torchvision downloads into ``torch.hub.get_dir()/checkpoints`` for each LPIPS net.
_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "vgg16": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

# Smallest square input (pixels per side) each LPIPS trunk accepts; measured with lpips 0.1.4:
# AlexNet's stride-4 stem and two max-pools collapse anything below 31x31 to an empty feature map.
_LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "vgg16": 16, "squeeze": 17}

# (net, pretrained_backbone) pairs whose load failure was already warned about in this process.
_WARNED: set[tuple[str, bool]] = set()


@dataclass
class MetricResult:
    """Scores of one batch.

    ``values`` holds the batch means, ``per_image`` one value per image (same keys, see
    :data:`METRIC_NAMES`), and ``reasons`` explains every metric whose batch value is ``None``.
    """

    values: dict[str, float | None]
    per_image: dict[str, list[float | None]]
    reasons: dict[str, str] = field(default_factory=dict)


class LpipsScorer:
    """Lazy LPIPS (Zhang et al. 2018) distance between reconstructions and originals.

    The network is built on first use with ``lpips.LPIPS(net=net, pnet_rand=not pretrained_backbone)``.
    The linear calibration layers ship with the ``lpips`` package; the ImageNet trunk weights are
    downloaded by torchvision into ``torch.hub.get_dir()/checkpoints``. When that is impossible
    (offline and not cached) the scorer either raises :class:`UserInputError` (``require=True``) or
    warns once per process and returns ``None`` scores with :attr:`reason` set.

    Small images: the LPIPS trunks reject inputs whose feature maps collapse to nothing (AlexNet needs
    at least 31x31, VGG 16x16, SqueezeNet 17x17). Smaller images (e.g. 28x28 MNIST) are upsampled
    bilinearly, both reconstruction and original alike and keeping the aspect ratio, until the
    shorter side reaches that minimum. 32x32 images are scored at their own size with every net.
    """

    def __init__(
        self,
        net: str = "alex",
        require: bool = False,
        device: str = "cpu",
        pretrained_backbone: bool = True,
    ) -> None:
        if net not in _LPIPS_MIN_SIZE:
            raise UserInputError(
                f"Unknown LPIPS network {net!r}; choose one of {', '.join(sorted(_LPIPS_MIN_SIZE))}."
            )
        self.net = net
        self.require = require
        self.device = device
        self.pretrained_backbone = pretrained_backbone
        self.reason: str | None = None
        self._model: torch.nn.Module | None = None
        self._tried = False

    @property
    def min_size(self) -> int:
        """Smallest side length (pixels) the chosen trunk accepts; smaller inputs are upsampled."""
        return _LPIPS_MIN_SIZE[self.net]

    @property
    def available(self) -> bool:
        """Whether the network could be loaded (loads it on first access)."""
        self._load()
        return self._model is not None

    def _explanation(self, short: str) -> str:
        fname = _BACKBONE_FILES[self.net]
        where = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
        return (
            f"LPIPS could not be set up: the ImageNet weights of its '{self.net}' backbone could not be "
            f"loaded ({short}). torchvision downloads them once from download.pytorch.org and caches them "
            f"as {where}. To fix this, run once with internet access, or copy {fname} into "
            f"{os.path.dirname(where)} (or point TORCH_HOME elsewhere). "
            + (
                "With metrics.require_lpips=true this is an error; set metrics.require_lpips=false to leave "
                "the lpips column empty and carry on."
                if self.require
                else "The lpips column is left empty (metrics.require_lpips=true makes this an error, "
                "metrics.lpips=false skips LPIPS)."
            )
        )

    def _load(self) -> None:
        if self._tried:
            return
        self._tried = True
        import lpips  # imported lazily: it pulls in torchvision models

        try:
            # torchvision prints "Downloading: <url>" and a progress bar while it tries to fetch the backbone, and
            # warns that 'pretrained' is deprecated: keep both off the user's terminal.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                model = lpips.LPIPS(net=self.net, pnet_rand=not self.pretrained_backbone, verbose=False)
        except Exception as exc:  # offline, missing cache, corrupt file, ...: all handled alike
            short = short_error(exc)
            self.reason = f"LPIPS backbone '{self.net}' could not be loaded offline: {short}"
            if self.require:
                raise UserInputError(self._explanation(short)) from exc
            key = (self.net, self.pretrained_backbone)
            if key not in _WARNED:
                _WARNED.add(key)
                print(self.off_line(), file=sys.stderr, flush=True)
            return
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model.to(self.device)

    def off_line(self) -> str:
        """The one line printed (once per process) when LPIPS is unavailable."""
        fname = _BACKBONE_FILES[self.net]
        where = os.path.join(torch.hub.get_dir(), "checkpoints")
        return (f"note: LPIPS is off (its {self.net} backbone {fname} is not in {where} and could not be "
                f"downloaded); the lpips column stays empty. To enable it, copy {fname} there or run once with "
                "internet access; metrics.lpips=false skips the attempt.")

    @classmethod
    def unavailable(cls, reason: str, net: str = "alex") -> LpipsScorer:
        """A scorer already known to be unavailable (``reason`` goes to the rows); it never tries to load."""
        scorer = cls(net=net)
        scorer._tried, scorer.reason = True, reason
        return scorer

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.detach().to(device=self.device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (max(self.min_size, math.ceil(h * scale)), max(self.min_size, math.ceil(w * scale)))
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def score(self, recon: Tensor, original: Tensor) -> list[float | None]:
        """Per-image LPIPS distance of ``[B,C,H,W]`` images in ``[0, 1]`` (C = 1 or 3).

        Inputs are mapped to ``[-1, 1]`` (``normalize=True``), grayscale is repeated to 3 channels,
        small images are upsampled (see the class docstring). ``None`` per image if unavailable.
        """
        if recon.shape != original.shape:
            raise ValueError(
                f"LPIPS: reconstruction shape {tuple(recon.shape)} != original {tuple(original.shape)}"
            )
        if recon.ndim != 4 or recon.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects [B,C,H,W] images with C in (1, 3), got {tuple(recon.shape)}")
        self._load()
        if self._model is None:
            return [None] * recon.shape[0]
        with torch.no_grad():
            dist = self._model(self._prepare(recon), self._prepare(original), normalize=True)
        return [float(v) for v in dist.reshape(recon.shape[0]).cpu()]


def _ssim_one(rec: np.ndarray, orig: np.ndarray) -> tuple[float | None, str | None]:
    """SSIM of one CHW float64 pair; window shrinks for images under 7x7, ``None`` below 3x3."""
    c, h, w = rec.shape
    side = min(h, w)
    if side < 3:
        return None, f"image {h}x{w} is smaller than 3x3, SSIM undefined"
    win_size = None if side >= 7 else (side if side % 2 == 1 else side - 1)
    kwargs: dict[str, Any] = {"data_range": 1.0, "win_size": win_size}
    if c == 1:
        value = structural_similarity(rec[0], orig[0], **kwargs)
    else:
        value = structural_similarity(
            rec.transpose(1, 2, 0), orig.transpose(1, 2, 0), channel_axis=-1, **kwargs
        )
    return float(value), None


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def image_metrics(recon: Tensor, original: Tensor, lpips: LpipsScorer | None = None) -> MetricResult:
    """MSE, PSNR (dB), SSIM and LPIPS of ``recon`` against ``original``, both ``[B,C,H,W]``.

    - ``recon`` is clamped to ``[0, 1]`` first: scores are of the image a user would see.
    - MSE/PSNR/SSIM use float64 on the CPU, data range 1. PSNR = 10 log10(1 / MSE), and a perfect
      reconstruction (MSE == 0) has PSNR ``inf``; a batch mean containing ``inf`` is ``inf``.
    - SSIM is skimage's (7x7 uniform window, shrunk to the largest odd size that fits for images under
      7x7; ``None`` below 3x3), over channels for colour images.
    - Batch values are means over images of the per-image values; if any image has ``None``, the batch
      value is ``None`` and ``reasons`` says why. An image whose reconstruction contains NaN/inf gets
      ``None`` for every metric (reason ``"reconstruction contains NaN/inf"``).
    - ``lpips=None`` leaves LPIPS out (``None``, reason ``"LPIPS not requested"``).

    Raises ``ValueError`` for a shape mismatch, non-4-D input or an empty batch.
    """
    if recon.shape != original.shape:
        raise ValueError(
            f"reconstruction shape {tuple(recon.shape)} does not match original shape {tuple(original.shape)}"
        )
    if recon.ndim != 4:
        raise ValueError(f"expected [B,C,H,W] images, got shape {tuple(recon.shape)}")
    if recon.shape[0] == 0:
        raise ValueError("cannot score an empty batch of images")

    rec64 = recon.detach().to(device="cpu", dtype=torch.float64)
    orig64 = original.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(rec64).flatten(1).all(dim=1).tolist()
    rec64 = torch.nan_to_num(rec64, nan=0.0).clamp(0.0, 1.0)

    per_image: dict[str, list[float | None]] = {name: [] for name in METRIC_NAMES}
    reasons: dict[str, str] = {}
    rec_np, orig_np = rec64.numpy(), orig64.numpy()
    for i, ok in enumerate(finite):
        if not ok:
            for name in ("mse", "psnr", "ssim"):
                per_image[name].append(None)
                reasons[name] = NONFINITE_REASON
            continue
        mse = float(np.mean((rec_np[i] - orig_np[i]) ** 2))
        per_image["mse"].append(mse)
        per_image["psnr"].append(math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse))
        ssim, why = _ssim_one(rec_np[i], orig_np[i])
        per_image["ssim"].append(ssim)
        if why is not None:
            reasons["ssim"] = why

    if lpips is None:
        per_image["lpips"] = [None] * len(finite)
        reasons["lpips"] = NOT_REQUESTED_REASON
    elif recon.shape[1] not in (1, 3):
        per_image["lpips"] = [None] * len(finite)
        reasons["lpips"] = f"LPIPS needs 1 or 3 channels, got {recon.shape[1]}"
    else:
        scores = lpips.score(rec64.to(torch.float32), orig64.to(torch.float32))
        if not lpips.available:
            reasons["lpips"] = lpips.reason or "LPIPS unavailable"
        for i, ok in enumerate(finite):
            if not ok:
                scores[i] = None
                reasons.setdefault("lpips", NONFINITE_REASON)
        per_image["lpips"] = scores

    values = {name: _mean(per_image[name]) for name in METRIC_NAMES}
    reasons = {name: why for name, why in reasons.items() if values[name] is None}
    return MetricResult(values=values, per_image=per_image, reasons=reasons)
