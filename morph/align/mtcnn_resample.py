"""MTCNN's area resampling from a per-image integral image (summed-area table): pyramid levels
and the 24/48-px crops of R-Net and O-Net, four corners per output cell, with the bits that
adaptive average pooling (``interpolate(mode="area")``) gives (``morph.align.mtcnn``)."""
from __future__ import annotations

import numpy as np
import torch
from numba import njit


def integral_image(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, H+1, W+1, C) summed-area table, exact integers.

    int32 while 255 * H * W fits, int64 beyond.
    """
    b, h, w, c = images.shape
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    if images.device.type == "cpu":
        # one pass of running row sums in numba: 6 against 73 CPU-ms for a 1080p photo as two
        # torch cumsums (the second runs along a strided axis), whose cost rivalled P-Net's
        sat = np.empty((b, h + 1, w + 1, c), np.int32 if dtype == torch.int32 else np.int64)
        _integral_image_cpu(images.contiguous().numpy(), sat)
        return torch.from_numpy(sat)
    return _integral_image_torch(images, dtype)


def _integral_image_torch(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b, h, w, c = images.shape
    sat = torch.zeros((b, h + 1, w + 1, c), dtype=dtype, device=images.device)
    inner = sat[:, 1:, 1:]
    # Written straight into the table: 5x faster on CPU than converting, then copying.
    torch.cumsum(images, 1, dtype=dtype, out=inner)
    inner.cumsum_(2)
    return sat


@njit(cache=True, error_model="numpy")
def _integral_image_cpu(images, sat):
    """``integral_image`` on CPU: sat[k, y + 1, x + 1] = sat[k, y, x + 1] + (row y's sum up to x)."""
    b, h, w, c = images.shape
    for k in range(b):
        for x in range(w + 1):
            for ch in range(c):
                sat[k, 0, x, ch] = 0
        for y in range(h):
            for ch in range(c):
                sat[k, y + 1, 0, ch] = 0
            for ch in range(c):
                run = 0
                for x in range(w):
                    run += images[k, y, x, ch]
                    sat[k, y + 1, x + 1, ch] = sat[k, y, x + 1, ch] + run


def _area_bounds(start: torch.Tensor, length: torch.Tensor, out: int):
    """Input ranges [lo, hi) of each output cell, as adaptive average pooling chooses them.

    start, length: (K,) int64 -> lo, hi: (K, out) int64.
    """
    i = torch.arange(out, device=start.device)
    lo = start[:, None] + torch.div(i * length[:, None], out, rounding_mode="floor")
    hi = start[:, None] + torch.div((i + 1) * length[:, None] + out - 1, out, rounding_mode="floor")
    return lo, hi


def _normalise(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # Area average, then MTCNN's (x - 127.5) / 128, in the order facenet-pytorch applies them.
    out = total.to(torch.float32)
    return out.div_(count.to(torch.float32)).sub_(127.5).mul_(0.0078125)


@njit(cache=True, error_model="numpy")
def _area_resize_cpu(sat, image_index, x0, y0, x1, y1, out):
    """``resize_crops`` in one pass per output cell (the CPU path): out (K, out_h, out_w, C) float32.

    The same integers (bounds as ``_area_bounds``, four-corner sums) and the same float32
    operations in the same order as the torch path, so the same bits; without its (4, K, size,
    size) index and corner tensors, which made the crops cost more than R-Net itself."""
    n, out_h, out_w, nc = out.shape
    cols = np.empty((out_w, 2), np.int64)
    for k in range(n):
        b, lh, lw = image_index[k], y1[k] - y0[k], x1[k] - x0[k]
        for j in range(out_w):
            cols[j, 0] = x0[k] + (j * lw) // out_w
            cols[j, 1] = x0[k] + ((j + 1) * lw + out_w - 1) // out_w
        for i in range(out_h):
            r0 = y0[k] + (i * lh) // out_h
            r1 = y0[k] + ((i + 1) * lh + out_h - 1) // out_h
            for j in range(out_w):
                c0, c1 = cols[j, 0], cols[j, 1]
                count = np.float32((r1 - r0) * (c1 - c0))
                for c in range(nc):
                    total = sat[b, r1, c1, c] - sat[b, r0, c1, c] - sat[b, r1, c0, c] + sat[b, r0, c0, c]
                    out[k, i, j, c] = (np.float32(total) / count - np.float32(127.5)) * np.float32(0.0078125)


def _area_resize_numba(sat, image_index, x0, y0, x1, y1, out_h, out_w):
    out = np.empty((image_index.shape[0], out_h, out_w, sat.shape[-1]), np.float32)
    _area_resize_cpu(sat.numpy(), image_index.numpy(), x0.numpy(), y0.numpy(), x1.numpy(), y1.numpy(), out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def resize_levels(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole images area-resized to (out_h, out_w), normalised: (B, 3, out_h, out_w) channels-last."""
    _, h1, w1, _ = sat.shape
    dev = sat.device
    if dev.type == "cpu":
        b = sat.shape[0]
        zero = torch.zeros(b, dtype=torch.int64)
        return _area_resize_numba(sat, torch.arange(b), zero, zero, torch.full((b,), w1 - 1), torch.full((b,), h1 - 1),
                                  out_h, out_w)
    return _resize_levels_torch(sat, out_h, out_w)


def _resize_levels_torch(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    _, h1, w1, _ = sat.shape
    dev = sat.device
    r0, r1 = _area_bounds(torch.zeros(1, dtype=torch.int64, device=dev),
                          torch.full((1,), h1 - 1, dtype=torch.int64, device=dev), out_h)
    c0, c1 = _area_bounds(torch.zeros(1, dtype=torch.int64, device=dev),
                          torch.full((1,), w1 - 1, dtype=torch.int64, device=dev), out_w)
    r0, r1, c0, c1 = r0[0], r1[0], c0[0], c1[0]
    rows = sat.index_select(1, r1).sub_(sat.index_select(1, r0))  # (B, out_h, W+1, C)
    total = rows[:, :, c1].sub_(rows[:, :, c0])  # (B, out_h, out_w, C); faster than index_select here
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :])[..., None]
    return _normalise(total, count).permute(0, 3, 1, 2)


def resize_crops(sat: torch.Tensor, image_index: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                 x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel ranges [x0, x1) x [y0, y1) of images ``image_index`` area-resized to size x size.

    All arguments (K,) int64 on sat's device; returns (K, 3, size, size) normalised, channels-last.
    """
    if sat.device.type == "cpu":
        return _area_resize_numba(sat, image_index, x0, y0, x1, y1, size, size)
    return _resize_crops_torch(sat, image_index, x0, y0, x1, y1, size)


def _resize_crops_torch(sat: torch.Tensor, image_index: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                        x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
    _, h1, w1, c = sat.shape
    r0, r1 = _area_bounds(y0, y1 - y0, size)
    c0, c1 = _area_bounds(x0, x1 - x0, size)
    # Row offsets into the flattened (B * (H+1) * (W+1), C) table; one index_select for all four
    # corners is about twice as fast as four advanced-indexing gathers.
    base = (image_index * h1)[:, None]
    top, bottom = ((base + r0) * w1)[:, :, None], ((base + r1) * w1)[:, :, None]
    left, right = c0[:, None, :], c1[:, None, :]
    index = torch.stack([bottom + right, top + right, bottom + left, top + left])  # (4, K, size, size)
    corners = sat.view(-1, c).index_select(0, index.view(-1)).view(*index.shape, c)
    total = (corners[0] - corners[1]).sub_(corners[2]).add_(corners[3])  # (K, size, size, C)
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :])[..., None]
    return _normalise(total, count).permute(0, 3, 1, 2)
