"""Residual networks for CIFAR-10 and the registry of named configurations.

The module and parameter names (`conv1`, `bn1`, `layerK.J.conv1`, `layerK.J.shortcut.0`,
`linear`, ...) follow the original project's code, so its state dicts load with strict=True.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .fastnet import FastConfig

PARAM_LIMIT = 5_000_000


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a BasicBlock ResNet: blocks per stage and the width of each stage."""

    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int = 10

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": "resnet", **d}

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        return cls(tuple(d["blocks"]), tuple(d["widths"]), int(d.get("num_classes", 10)))

    def build(self) -> ResNet:
        return ResNet(self)


ArchConfig = ResNetConfig | FastConfig


# Named configurations. `seed` is the original project's network (4,771,146 parameters).
ARCHS: dict[str, ArchConfig] = {
    "seed": ResNetConfig(blocks=(5, 4, 3), widths=(64, 128, 256)),
    "tiny": ResNetConfig(blocks=(1, 1, 1), widths=(16, 32, 64)),
    "fast": FastConfig(widths=(64, 256, 256)),
    # The fast net's design grown towards airbench96 (two convs per residual branch) and kept under 5M.
    "best": FastConfig(widths=(128, 256, 320), depth=2),
}


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 -> stages of BasicBlocks (stride 2 from the second stage on) -> global pool -> linear."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if len(config.blocks) != len(config.widths) or not config.blocks:
            raise UserError("a ResNet config needs one width per stage, e.g. blocks (5,4,3) and widths (64,128,256)")
        self.config = config
        w0 = config.widths[0]
        self.conv1 = nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        c_in = w0
        for i, (n, width) in enumerate(zip(config.blocks, config.widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = width
        self.linear = nn.Linear(c_in, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) normalized images -> (B, num_classes) logits
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(len(self.config.blocks)):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def config_from_dict(d: dict) -> ArchConfig:
    """Rebuild a config saved with to_dict(); files without a 'kind' hold a ResNet."""
    return FastConfig.from_dict(d) if d.get("kind") == "fast" else ResNetConfig.from_dict(d)


def get_config(arch: str) -> ArchConfig:
    """Look up a named configuration, with a clear error for unknown names."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch '{arch}'; choose one of: {', '.join(ARCHS)}")
    return ARCHS[arch]


def build_model(arch: str | ArchConfig, allow_over_limit: bool = False) -> nn.Module:
    """Build a network by name or config; refuse >= 5M parameters unless explicitly allowed."""
    config = get_config(arch) if isinstance(arch, str) else arch
    model = config.build()
    n = count_params(model)
    if n >= PARAM_LIMIT and not allow_over_limit:
        raise UserError(
            f"this configuration has {n:,} parameters, over the project's {PARAM_LIMIT:,} limit; "
            "shrink it or pass allow_over_limit=True"
        )
    return model


def arch_name(config: ArchConfig) -> str | None:
    """The registry name of a config, or None when it is not a named one."""
    return next((name for name, c in ARCHS.items() if c == config), None)


def infer_config(state_dict: dict[str, torch.Tensor]) -> ResNetConfig | None:
    """Recover blocks/widths from a state dict in the original key format, or None if it is not one."""
    blocks: list[int] = []
    widths: list[int] = []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state_dict:
        n = 0
        while f"layer{stage}.{n}.conv1.weight" in state_dict:
            n += 1
        blocks.append(n)
        widths.append(int(state_dict[f"layer{stage}.0.conv1.weight"].shape[0]))
        stage += 1
    head = state_dict.get("linear.weight")
    if not blocks or head is None or head.ndim != 2:
        return None
    return ResNetConfig(tuple(blocks), tuple(widths), int(head.shape[0]))


def macs_per_image(model: nn.Module, size: int = 32) -> int:
    """Multiply-adds of one forward pass on a size x size image, counted over conv and linear layers."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv with bias equal to conv followed by BN in eval mode: w' = w * s, b' = beta - mean * s."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    fused.weight.data = conv.weight.detach() * scale.detach()[:, None, None, None]
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bn.bias.detach() + (bias - bn.running_mean) * scale.detach()).to(fused.weight.dtype)
    return fused.to(conv.weight.device)


def fold_batchnorm(model: ResNet) -> ResNet:
    """An inference copy with every BatchNorm folded into the conv before it (about 14% faster on CPU).

    The BN modules become identities, so the forward code and its numerics stay those of eval mode.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, BasicBlock) and len(module.shortcut) == 2:
            module.shortcut = nn.Sequential(_fold(module.shortcut[0], module.shortcut[1]))
    return folded
