"""Periodic model of a strided Conv2d: Fourier-block inverse of its Gram matrix, a preconditioner for A^T A.

On a torus of ``N = s * M`` pixels per side, a convolution with stride ``s`` is a stride-1 circular
convolution of the ``s_h s_w`` polyphase components of its input (pixel ``s u + phi`` is component ``phi``
at ``u``), so its Gram matrix ``T = A_per^T A_per`` is block-diagonal in the 2-D Fourier basis of the
``M_h x M_w`` polyphase grid: one Hermitian ``(s_h s_w C) x (s_h s_w C)`` block per frequency,
``T(w) = What(w)^H What(w)`` with ``What(w)[f, (c, phi)] = sum_{taps with phase phi} W[f, c, a, b] e^{2 pi i w q / M}``
(tap ``a`` reads polyphase row ``u + q`` of phase ``phi``, ``a - p = s q + phi``).

The image sits in a corner of the torus with a margin of at least a kernel size, so no kernel window wraps
from one edge of the image to the other: restricted to the image, ``T`` is ``A^T A`` plus the Gram of the
output windows the torus adds at the image border (none when ``padding <= kernel - stride``). Hence
``R (wa T + gamma I)^-1 R^T`` (``R`` restricts the torus to the image) approximates ``(wa A^T A)^-1``, exactly
so for images far from the border; the preconditioners of ``rgap.structured`` are built from it.
"""

from __future__ import annotations

import math

import torch

#: Largest batch of vectors pushed through one inverse application (bounds the FFT buffers).
_CHUNK = 64


class TorusGramInverse:
    """``v -> R (wa T + gamma I)^-1 R^T v`` for the periodic Gram ``T`` of one convolution geometry.

    ``weight`` is the layer's [F, C, kh, kw] weight, ``input_shape`` its (C, H, W) input; ``relative``: ``gamma``
    is relative to the mean eigenvalue of ``wa T``. With ``mix`` ([C]
    coefficients) the operator acts on single-channel images (1, H, W) instead: ``T = sum_c mix[c] T_cc``, the
    combination of the channel-diagonal blocks (``s_h s_w x s_h s_w`` per frequency). Everything is
    float64/complex128 on the weight's device.
    """

    def __init__(self, weight: torch.Tensor, input_shape: tuple[int, int, int], stride: tuple[int, int],
                 padding: tuple[int, int], wa: float, gamma: float, mix: torch.Tensor | None = None,
                 relative: bool = False) -> None:
        channels, height, width = input_shape
        n_out, _, kh, kw = weight.shape
        (sh, sw), (ph, pw) = stride, padding
        self.stride = (sh, sw)
        self.input_shape = (channels if mix is None else 1, height, width)
        self.mh, self.mw = math.ceil((height + kh) / sh), math.ceil((width + kw) / sw)
        self.nh, self.nw = sh * self.mh, sw * self.mw
        cplx = torch.complex128
        weight = weight.to(torch.float64)
        device = weight.device
        rows = torch.arange(self.mh, dtype=torch.float64, device=device)
        cols = torch.arange(self.mw // 2 + 1, dtype=torch.float64, device=device)
        # what[wh, ww, f, c, phi_h, phi_w]
        what = torch.zeros(self.mh, self.mw // 2 + 1, n_out, channels, sh, sw, dtype=cplx, device=device)
        for a in range(kh):
            qa, pa = divmod(a - ph, sh)
            for b in range(kw):
                qb, pb = divmod(b - pw, sw)
                phase = torch.exp(2j * math.pi * (rows[:, None] * (qa / self.mh) + cols[None, :] * (qb / self.mw)))
                what[:, :, :, :, pa, pb] += phase[:, :, None, None] * weight[:, :, a, b].to(cplx)
        phases = sh * sw
        if mix is not None:
            what = what.reshape(self.mh, self.mw // 2 + 1, n_out, channels, phases).permute(0, 1, 3, 2, 4)
            coefficients = (wa * mix.to(torch.float64)).to(cplx).reshape(1, 1, channels, 1, 1)
            blocks = ((what.mH @ what) * coefficients).sum(2)  # [wh, ww, phases, phases]
        else:
            what = what.reshape(self.mh, self.mw // 2 + 1, n_out, channels * phases)
            blocks = wa * (what.mH @ what)  # [wh, ww, C phases, C phases]
        size = blocks.shape[-1]
        if relative:  # gamma relative to the mean eigenvalue of T
            gamma = gamma * float(blocks.diagonal(dim1=-2, dim2=-1).real.mean())
        blocks.diagonal(dim1=-2, dim2=-1).add_(gamma)
        self.inverse = torch.linalg.inv(blocks)
        self.size = size

    @property
    def n(self) -> int:
        channels, height, width = self.input_shape
        return channels * height * width

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Apply to one flat vector [n] or a batch [m, n]; returns the same shape."""
        if vectors.dim() == 1:
            return self._apply(vectors.unsqueeze(0))[0]
        if vectors.shape[0] <= _CHUNK:
            return self._apply(vectors)
        return torch.cat([self._apply(part) for part in vectors.split(_CHUNK)])

    def apply_channel(self, planes: torch.Tensor, channel: int) -> torch.Tensor:
        """The inverse applied to inputs that are zero outside input ``channel``: ``planes`` [m, H*W] holds that
        channel; returns [m, C*H*W]. Transforms only the one channel (the others are zero)."""
        out = []
        for part in planes.split(_CHUNK):
            out.append(self._apply(part.reshape(part.shape[0], 1, -1), channel))
        return torch.cat(out)

    def _apply(self, vectors: torch.Tensor, channel: int | None = None) -> torch.Tensor:
        channels, height, width = self.input_shape
        (sh, sw), mh, mw, m = self.stride, self.mh, self.mw, vectors.shape[0]
        given = channels if channel is None else 1
        torus = vectors.new_zeros(m, given, self.nh, self.nw)
        torus[:, :, :height, :width] = vectors.reshape(m, given, height, width)
        poly = torus.reshape(m, given, mh, sh, mw, sw).permute(0, 1, 3, 5, 2, 4)  # m C sh sw Mh Mw
        spectrum = torch.fft.rfft2(poly)  # m C sh sw Mh Mw2
        v = spectrum.permute(4, 5, 1, 2, 3, 0).reshape(mh, mw // 2 + 1, given * sh * sw, m)
        inverse = self.inverse
        if channel is not None:  # only the columns of that channel's phases
            inverse = inverse[..., channel * sh * sw : (channel + 1) * sh * sw]
        solved = (inverse @ v).reshape(mh, mw // 2 + 1, channels, sh, sw, m).permute(5, 2, 3, 4, 0, 1)
        poly = torch.fft.irfft2(solved, s=(mh, mw))  # m C sh sw Mh Mw
        torus = poly.permute(0, 1, 4, 2, 5, 3).reshape(m, channels, self.nh, self.nw)
        return torus[:, :, :height, :width].reshape(m, -1)
