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
so for images far from the border; the preconditioners of ``rgap.algorithm.structured`` are built from it.
"""

from __future__ import annotations

import copy
import math

import torch

from rgap.algorithm.solvers import cholesky_apply

#: ``TorusGramInverse`` rounds its grid up to FFT-friendly sizes (``torus_grid(fast=True)``).
FAST_GRID = True
#: Largest batch of vectors pushed through one inverse application (bounds the FFT buffers).
_CHUNK = 64


def torus_grid(input_shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, int],
               fast: bool = False) -> tuple[int, int]:
    """``(M_h, M_w)``: the polyphase grid of the torus, ``s M >= H + kh`` (no kernel window wraps the image).

    ``fast``: each side rounded up to the next size whose only prime factors are 2, 3 and 5 (``fft_size``), on
    which the FFTs are several times faster than on sizes with a large prime factor (58 = 2 x 29: 2.2x)."""
    (height, width), (kh, kw), (sh, sw) = input_shape[1:], kernel, stride
    grid = math.ceil((height + kh) / sh), math.ceil((width + kw) / sw)
    return (fft_size(grid[0]), fft_size(grid[1])) if fast else grid


def margin_pixels(input_shape: tuple[int, int, int], stride: tuple[int, int], grid: tuple[int, int]) -> int:
    """Pixels of the torus ``(s_h M_h) x (s_w M_w)`` outside the image, over all channels."""
    channels, height, width = input_shape
    return channels * (stride[0] * grid[0] * stride[1] * grid[1] - height * width)


def _grid(input_shape: tuple[int, int, int], kernel: tuple[int, ...], stride: tuple[int, int],
          exact_margin: int) -> tuple[int, int]:
    """The polyphase grid of a ``TorusGramInverse``: ``torus_grid``'s fast one, or its minimal one where only that
    keeps the margin within ``exact_margin`` (the exact inverse saves far more CG steps than faster FFTs)."""
    fast = torus_grid(input_shape, kernel, stride, fast=FAST_GRID)
    if exact_margin and margin_pixels(input_shape, stride, fast) > exact_margin:
        minimal = torus_grid(input_shape, kernel, stride)
        if margin_pixels(input_shape, stride, minimal) <= exact_margin:
            return minimal
    return fast


def fft_size(n: int) -> int:
    """The smallest ``m >= n`` of the form ``2^a 3^b 5^c``."""
    m = max(n, 1)
    while True:
        rest = m
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return m
        m += 1


def periodic_gram(weight: torch.Tensor, input_shape: tuple[int, int, int], stride: tuple[int, int],
                  padding: tuple[int, int], wa: float = 1.0, mix: torch.Tensor | None = None,
                  grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The Fourier blocks of ``wa T`` (``T = A_per^T A_per``) on the half spectrum of ``rfft2``:
    [M_h, M_w // 2 + 1, C s_h s_w, C s_h s_w], or with ``mix`` the blocks of ``wa sum_c mix[c] T_cc``:
    [M_h, M_w // 2 + 1, s_h s_w, s_h s_w]. The other half of the spectrum holds their complex conjugates.
    ``grid``: ``(M_h, M_w)``, at least ``torus_grid``'s (the default)."""
    channels = input_shape[0]
    n_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    mh, mw = grid or torus_grid(input_shape, (kh, kw), stride)
    cplx = torch.complex128
    weight = weight.to(torch.float64)
    device = weight.device
    rows = torch.arange(mh, dtype=torch.float64, device=device)
    cols = torch.arange(mw // 2 + 1, dtype=torch.float64, device=device)
    # what[wh, ww, f, c, phi_h, phi_w]
    what = torch.zeros(mh, mw // 2 + 1, n_out, channels, sh, sw, dtype=cplx, device=device)
    for a in range(kh):
        qa, pa = divmod(a - ph, sh)
        for b in range(kw):
            qb, pb = divmod(b - pw, sw)
            phase = torch.exp(2j * math.pi * (rows[:, None] * (qa / mh) + cols[None, :] * (qb / mw)))
            what[:, :, :, :, pa, pb] += phase[:, :, None, None] * weight[:, :, a, b].to(cplx)
    phases = sh * sw
    if mix is not None:
        what = what.reshape(mh, mw // 2 + 1, n_out, channels, phases).permute(0, 1, 3, 2, 4)
        coefficients = (wa * mix.to(torch.float64)).to(cplx).reshape(1, 1, channels, 1, 1)
        return ((what.mH @ what) * coefficients).sum(2)
    what = what.reshape(mh, mw // 2 + 1, n_out, channels * phases)
    return wa * (what.mH @ what)


def border_free(input_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> bool:
    """True when the torus adds no output window that reaches into the image: then ``A^T A`` is exactly the
    restriction of ``T`` to the image (a principal submatrix), so ``lambda_min(A^T A) >= lambda_min(T)``.

    Per axis: the window before the first output (start ``-s - p``) must end before pixel 0 (``k <= s + p``)
    and the window after the last (start ``s Ho - p``) must start at or after pixel ``H``.
    """
    for size, k, s, p in zip(input_shape[1:], kernel, stride, padding, strict=True):
        outputs = (size + 2 * p - k) // s + 1
        if k > s + p or s * outputs - p < size:
            return False
    return True


def periodic_lam_min(weight: torch.Tensor, input_shape: tuple[int, int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> float:
    """lambda_min of the periodic Gram ``T`` (smallest eigenvalue over its Fourier blocks)."""
    blocks = periodic_gram(weight, input_shape, stride, padding)
    return float(torch.linalg.eigvalsh(blocks).min())


def hermitian_inverse(blocks: torch.Tensor) -> torch.Tensor:
    """The inverses of a batch of Hermitian positive definite matrices [..., n, n], without LU.

    By Cholesky; blocks that are not numerically positive definite by eigen-decomposition (``V diag(1 / w) V^H``,
    what ``torch.linalg.inv`` would give for a Hermitian matrix). Batched LU (``torch.linalg.inv`` / ``solve``) is
    avoided: with MKL and two or more threads it fails for matrices of about 150 rows and more (pytorch/pytorch
    #142815); with torch 2.14.1 it printed "Parameter 6 was incorrect on entry to ZLASWP" and never returned.
    """
    factor, info = torch.linalg.cholesky_ex(blocks)
    inverse = torch.cholesky_inverse(factor)
    failed = info != 0
    if bool(failed.any()):
        w, v = torch.linalg.eigh(blocks[failed])
        inverse[failed] = (v / w.unsqueeze(-2).to(v.dtype)) @ v.mH
    return inverse


class TorusGramInverse:
    """``v -> R (wa T + gamma I)^-1 R^T v`` for the periodic Gram ``T`` of one convolution geometry.

    ``weight`` is the layer's [F, C, kh, kw] weight, ``input_shape`` its (C, H, W) input; ``relative``: ``gamma``
    is relative to the mean eigenvalue of ``wa T``. With ``mix`` ([C]
    coefficients) the operator acts on single-channel images (1, H, W) instead: ``T = sum_c mix[c] T_cc``, the
    combination of the channel-diagonal blocks (``s_h s_w x s_h s_w`` per frequency). ``exact_margin``: when
    the torus has at most that many pixels outside the image (all channels), the operator becomes the exact
    inverse of the restricted ``R (wa T + gamma I) R^T`` (a Schur complement over those pixels, two
    transforms per application); for a border-free layer (``border_free``) that is ``(wa A^T A + gamma I)^-1``.
    Everything is float64/complex128 on the weight's device.
    """

    def __init__(self, weight: torch.Tensor, input_shape: tuple[int, int, int], stride: tuple[int, int],
                 padding: tuple[int, int], wa: float, gamma: float, mix: torch.Tensor | None = None,
                 relative: bool = False, exact_margin: int = 0) -> None:
        channels, height, width = input_shape
        (sh, sw) = stride
        self.stride = (sh, sw)
        self.input_shape = (channels if mix is None else 1, height, width)
        self.mh, self.mw = _grid(self.input_shape, weight.shape[2:], stride, exact_margin)
        self.nh, self.nw = sh * self.mh, sw * self.mw
        blocks = periodic_gram(weight, input_shape, stride, padding, wa, mix, grid=(self.mh, self.mw))
        size = blocks.shape[-1]
        if relative:  # gamma relative to the mean eigenvalue of T
            gamma = gamma * float(blocks.diagonal(dim1=-2, dim2=-1).real.mean())
        blocks.diagonal(dim1=-2, dim2=-1).add_(gamma)
        self.inverse = hermitian_inverse(blocks)
        self.size = size
        self._lowered: TorusGramInverse | None = None  # the float32 copy, made by ``lowered``
        self.margin: torch.Tensor | None = None
        self.margin_chol: torch.Tensor | None = None  # Cholesky factor of [T^-1]_mm
        if exact_margin:
            self._exact_margin(exact_margin)

    def lowered(self) -> TorusGramInverse:
        """The same operator in float32 / complex64 (a shallow copy, made once): for building preconditioners,
        whose set-up needs no float64 accuracy."""
        if self._lowered is None:
            low = copy.copy(self)
            low.inverse = self.inverse.to(torch.complex64)
            low.margin_chol = None if self.margin_chol is None else self.margin_chol.to(torch.float32)
            low._lowered = low
            self._lowered = low
        return self._lowered

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
        m = vectors.shape[0]
        given = channels if channel is None else 1
        torus = vectors.new_zeros(m, given, self.nh, self.nw)
        torus[:, :, :height, :width] = vectors.reshape(m, given, height, width)
        solved = self._core(torus, channel)
        if self.margin is not None:  # Schur complement over the margin: the inverse of the restricted Gram
            flat = solved.reshape(m, -1)
            weights = cholesky_apply(flat[:, self.margin].T, self.margin_chol).T
            spread = torch.zeros_like(flat)
            spread[:, self.margin] = weights
            solved = solved - self._core(spread.reshape(m, channels, self.nh, self.nw))
        return solved[:, :, :height, :width].reshape(m, -1)

    def _core(self, torus: torch.Tensor, channel: int | None = None) -> torch.Tensor:
        """``(wa T + gamma I)^-1`` on whole-torus images [m, C (1 with ``channel``), N_h, N_w] -> [m, C, N_h, N_w]."""
        channels = self.input_shape[0]
        (sh, sw), mh, mw, m = self.stride, self.mh, self.mw, torus.shape[0]
        given = torus.shape[1]
        poly = torus.reshape(m, given, mh, sh, mw, sw).permute(0, 1, 3, 5, 2, 4)  # m C sh sw Mh Mw
        spectrum = torch.fft.rfft2(poly)  # m C sh sw Mh Mw2
        v = spectrum.permute(4, 5, 1, 2, 3, 0).reshape(mh, mw // 2 + 1, given * sh * sw, m)
        inverse = self.inverse
        if channel is not None:  # only the columns of that channel's phases
            inverse = inverse[..., channel * sh * sw : (channel + 1) * sh * sw]
        solved = (inverse @ v).reshape(mh, mw // 2 + 1, channels, sh, sw, m).permute(5, 2, 3, 4, 0, 1)
        poly = torch.fft.irfft2(solved, s=(mh, mw))  # m C sh sw Mh Mw
        return poly.permute(0, 1, 4, 2, 5, 3).reshape(m, channels, self.nh, self.nw)

    def _exact_margin(self, limit: int) -> None:
        """Make the operator the inverse of the *restricted* ``R (wa T + gamma I) R^T`` (no border error):
        ``(T_dd)^-1 = [T^-1]_dd - [T^-1]_dm ([T^-1]_mm)^-1 [T^-1]_md`` over the torus pixels ``m`` outside the
        image, when there are at most ``limit`` of them (all channels).

        ``[T^-1]_mm`` needs only ``C s_h s_w`` transforms: ``T`` commutes with shifts by the stride, so the column
        of any pixel is a shifted column of the pixel with the same channel and phase in the first stride cell.
        """
        channels, height, width = self.input_shape
        (sh, sw), nh, nw = self.stride, self.nh, self.nw
        outside = torch.ones(channels, nh, nw, dtype=torch.bool)
        outside[:, :height, :width] = False
        margin = torch.nonzero(outside.reshape(-1)).reshape(-1)
        if margin.numel() == 0 or margin.numel() > limit:
            return
        device = self.inverse.device
        units = torch.zeros(channels, sh, sw, channels, nh, nw, dtype=torch.float64, device=device)
        for c in range(channels):
            for a in range(sh):
                for b in range(sw):
                    units[c, a, b, c, a, b] = 1.0
        base = self._core(units.reshape(-1, channels, nh, nw)).reshape(channels, sh, sw, channels, nh, nw)
        c, rest = margin // (nh * nw), margin % (nh * nw)
        i, j = rest // nw, rest % nw
        # entry (p, q) = [T^-1]_{q, p} = base[c_p, phase(p)][c_q, q - (p's stride cell)], one flat gather
        source = ((c * sh + i % sh) * sw + j % sw) * channels  # [|m|]: p's (channel, phase) row block
        # q - (p's cell), cyclically, as a pixel index: one row per distinct cell, gathered by rows (the element-wise
        # index arithmetic on |m|^2 entries took most of the set-up: 0.25 of 0.5 s at |m| = 3,264)
        cells, which = torch.unique(sh * (i // sh) * nw + sw * (j // sw), return_inverse=True)
        shifted = ((i.unsqueeze(0) - (cells // nw).unsqueeze(1)) % nh) * nw
        shifted += (j.unsqueeze(0) - (cells % nw).unsqueeze(1)) % nw
        flat = shifted[which]
        flat += (source * (nh * nw)).unsqueeze(1)
        flat += (c * (nh * nw)).unsqueeze(0)
        block = base.reshape(-1)[flat.to(device)]
        del flat
        block += block.T.clone()
        block *= 0.5
        self.margin_chol = torch.linalg.cholesky(block)
        self.margin = margin.to(device)

    def raw_channel(self, planes: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The plain periodic inverse (no margin correction) of inputs zero outside ``channel`` (``planes``
        [m, H*W]): its values on the image [m, C*H*W] and on the margin pixels [m, |margin|] (None without
        ``exact_margin``), for forming ``U^T S U`` with the correction ``- X^T ([T^-1]_mm)^-1 X`` (``margin_chol``)."""
        channels, height, width = self.input_shape
        m = planes.shape[0]
        torus = planes.new_zeros(m, 1, self.nh, self.nw)
        torus[:, 0, :height, :width] = planes.reshape(m, height, width)
        solved = self._core(torus, channel)
        image = solved[:, :, :height, :width].reshape(m, -1)
        margin = None if self.margin is None else solved.reshape(m, -1)[:, self.margin]
        return image, margin
