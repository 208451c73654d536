"""Backdoor triggers, apart from the attacks that use them: ``stamp(x, mask, pattern)``.

Images are raw uint8 NCHW arrays; a trigger is a (mask, pattern) pair of the same HxW. The
pixel patterns follow Wu et al. Fig. 1 (1, 3, 5, 7 or 9 bright pixels near the bottom-right
corner); DBA (Xie et al.) splits one global pattern into parts, one per attacker, and is
evaluated with the whole pattern. A3FL (Zhang et al.) optimises the values of a square patch
(``patch_mask``) every round.
"""

from __future__ import annotations

import numpy as np

# Offsets (row, col) from the bottom-right corner, margin 1, in the order pixels are added:
# 1 = a dot, 3 = a diagonal, 5 = an X, 7 and 9 fill the 3x3 block's edges.
_PIXEL_ORDER = [(2, 2), (1, 1), (3, 3), (1, 3), (3, 1), (2, 1), (2, 3), (1, 2), (3, 2)]


def stamp(x: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """(1 - mask) * x + mask * pattern, on a batch of uint8 images (N, C, H, W)."""
    m = mask.astype(np.float32)
    out = (1.0 - m) * x.astype(np.float32) + m * pattern.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pixel_pattern(num_pixels: int, size: int, value: int) -> tuple[np.ndarray, np.ndarray]:
    """Wu et al.'s n-pixel pattern (n in 1..9): the mask and an image of ``value`` there."""
    if not 1 <= num_pixels <= len(_PIXEL_ORDER):
        raise ValueError(f"pixel patterns have 1..{len(_PIXEL_ORDER)} pixels, not {num_pixels}")
    mask = np.zeros((size, size), np.float32)
    for dr, dc in _PIXEL_ORDER[:num_pixels]:
        mask[size - dr - 1, size - dc - 1] = 1.0
    return mask, np.full((size, size), value, np.uint8)


def dba_pattern(num_parts: int, size: int, value: int, part: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """DBA's global trigger: ``num_parts`` 1x4 bars near the top-left corner (two per row of
    bars). ``part=i`` gives attacker i's local trigger; ``None`` the whole pattern."""
    mask = np.zeros((size, size), np.float32)
    for i in range(num_parts):
        if part is None or i == part % num_parts:
            row, col = 1 + 3 * (i // 2), 1 + 5 * (i % 2)
            mask[row, col:col + 4] = 1.0
    return mask, np.full((size, size), value, np.uint8)


def patch_mask(side: int, size: int, margin: int = 2) -> np.ndarray:
    """A ``side`` x ``side`` square mask ``margin`` pixels from the top-left corner (A3FL's
    trigger area, its authors' layout)."""
    if not 1 <= side <= size - margin:
        raise ValueError(f"a {side}x{side} patch does not fit a {size}x{size} image at margin "
                         f"{margin}")
    mask = np.zeros((size, size), np.float32)
    mask[margin:margin + side, margin:margin + side] = 1.0
    return mask
