"""`fast`: a residual network shaped for few multiply-adds per image (CPU training speed).

Each stage is conv3x3 -> 2x2 max-pool -> BN -> GELU, then a residual conv3x3-BN-GELU at the pooled
size. Pooling right after the widening conv (as in the public CIFAR-10 speed-run networks) runs the
costlier convolutions at a quarter of the pixels; a global max-pool and a bias-free linear layer
make the head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FastConfig:
    """Stem width and the width of each pooled stage."""

    widths: tuple[int, ...] = (64, 256, 256)
    stem: int = 32
    num_classes: int = 10

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": "fast", **d}

    @classmethod
    def from_dict(cls, d: dict) -> FastConfig:
        return cls(tuple(d["widths"]), int(d["stem"]), int(d.get("num_classes", 10)))

    def build(self) -> FastNet:
        return FastNet(self)


class ConvBN(nn.Module):
    """conv3x3 (no bias: BN follows) -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.bn(self.conv(x)))


class PoolStage(nn.Module):
    """Widen at full size, halve the size, then one residual conv at the pooled size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.residual = ConvBN(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn(F.max_pool2d(self.conv(x), 2)))  # (B, C, H/2, W/2)
        return x + self.residual(x)


class FastNet(nn.Module):
    """Stem -> pooled residual stages -> global max-pool -> linear."""

    def __init__(self, config: FastConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = ConvBN(3, config.stem)
        widths = (config.stem, *config.widths)
        self.stages = nn.Sequential(*[PoolStage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.linear = nn.Linear(widths[-1], config.num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> logits (B, num_classes); any H, W >= 2 ** len(widths)
        out = self.stages(self.stem(x))
        return self.linear(out.amax(dim=(2, 3)))
