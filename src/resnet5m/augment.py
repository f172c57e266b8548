"""Batched data augmentation on uint8 tensors: random crop with reflect padding, flip, cutout.

All randomness comes from an explicit torch.Generator on the CPU, so a run (and a resumed run,
and every rank of a data-parallel run) draws exactly the same augmentations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, H+2p, W+2p), mirrored at the borders. Done once per run."""
    if pad == 0:
        return images
    chunks = [F.pad(c.float(), (pad,) * 4, mode="reflect").to(torch.uint8) for c in images.split(4096)]
    return torch.cat(chunks)


def draw_params(n: int, pad: int, cutout: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random crop offsets, flip mask and cutout centres for n images (CPU tensors)."""
    return {
        "dy": torch.randint(0, 2 * pad + 1, (n,), generator=generator),
        "dx": torch.randint(0, 2 * pad + 1, (n,), generator=generator),
        "flip": torch.rand(n, generator=generator) < 0.5,
        "cy": torch.randint(0, 32, (n,), generator=generator) if cutout else torch.zeros(0),
        "cx": torch.randint(0, 32, (n,), generator=generator) if cutout else torch.zeros(0),
    }


def apply(padded: torch.Tensor, params: dict[str, torch.Tensor], cutout: int = 0) -> torch.Tensor:
    """Crop 32x32 windows out of padded uint8 images (B, 3, 32+2p, 32+2p), flip, and cut out squares."""
    device = padded.device
    b, size = padded.shape[0], 32
    base = torch.arange(size, device=device)
    rows = (params["dy"].to(device)[:, None] + base)[:, None, :, None]  # (B, 1, size, 1)
    cols = (params["dx"].to(device)[:, None] + base)[:, None, None, :]  # (B, 1, 1, size)
    batch = torch.arange(b, device=device)[:, None, None, None]
    chan = torch.arange(3, device=device)[None, :, None, None]
    x = padded[batch, chan, rows, cols]  # (B, 3, size, size) gather: one crop per image
    flip = params["flip"].to(device)[:, None, None, None]
    x = torch.where(flip, x.flip(3), x)
    if cutout:
        cy = params["cy"].to(device)[:, None, None]
        cx = params["cx"].to(device)[:, None, None]
        ys = base[None, :, None]
        xs = base[None, None, :]
        # A cutout x cutout square from centre - cutout//2: rows cy-c//2 .. cy-c//2+c-1 (exactly c, even or odd).
        lo = cutout // 2
        hole = ((ys - cy + lo) >= 0) & ((ys - cy + lo) < cutout) & ((xs - cx + lo) >= 0) & ((xs - cx + lo) < cutout)
        x = x.masked_fill(hole[:, None], 0)
    return x
