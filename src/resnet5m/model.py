"""Residual networks for CIFAR-10, the registry of named configurations, arch spec strings and analytic costs.

A spec names any ResNet shape: 'resnet:5,4,3@64,128,256' (BasicBlocks per stage @ stage widths) or
'bottleneck:3,4,6@64,128,256'; get_config takes a name or a spec, so every --arch flag does too.

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


SPEC_PREFIXES = {"resnet": "basic", "bottleneck": "bottleneck"}  # spec prefix -> block kind
SPEC_EXAMPLE = "resnet:5,4,3@64,128,256 (BasicBlocks per stage @ stage widths) or bottleneck:3,4,6@64,128,256"


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a ResNet: blocks per stage, the width of each stage, and the block kind.

    block "basic": two 3x3 convs per block, output `width` channels. "bottleneck": 1x1 reduce to `width`,
    3x3 (strided), 1x1 expand to 4 x `width` channels, as in torchvision's ResNet-50.
    """

    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int = 10
    block: str = "basic"

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": "resnet", **d}

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        # Files saved before the `block` field hold BasicBlock nets.
        return cls(tuple(d["blocks"]), tuple(d["widths"]), int(d.get("num_classes", 10)), d.get("block", "basic"))

    @property
    def spec(self) -> str:
        """The spec string of this shape, e.g. 'resnet:5,4,3@64,128,256' (num_classes is not part of it)."""
        prefix = next(p for p, kind in SPEC_PREFIXES.items() if kind == self.block)
        return f"{prefix}:{','.join(map(str, self.blocks))}@{','.join(map(str, self.widths))}"

    def build(self) -> ResNet:
        return ResNet(self)


def parse_spec(text: str) -> ResNetConfig:
    """'resnet:5,4,3@64,128,256' or 'bottleneck:3,4,6@64,128,256' -> its ResNetConfig; a bad spec is one UserError."""

    def bad(reason: str) -> UserError:
        return UserError(f"bad arch spec '{text}': {reason}; write e.g. {SPEC_EXAMPLE}")

    prefix, _, shape = text.replace(" ", "").partition(":")
    if prefix not in SPEC_PREFIXES:
        raise bad(f"it must start with {' or '.join(p + ':' for p in SPEC_PREFIXES)}")
    blocks_text, at, widths_text = shape.partition("@")
    if not at:
        raise bad("the '@' between the blocks and the widths is missing")
    try:
        blocks = tuple(int(v) for v in blocks_text.split(","))
        widths = tuple(int(v) for v in widths_text.split(","))
    except ValueError:
        raise bad("blocks and widths are comma-separated whole numbers") from None
    if len(blocks) != len(widths):
        raise bad(f"{len(blocks)} block counts but {len(widths)} widths; give one width per stage")
    if min(blocks) < 1 or min(widths) < 1:
        raise bad("every stage needs >= 1 block and a width >= 1")
    return ResNetConfig(blocks, widths, block=SPEC_PREFIXES[prefix])


ArchConfig = ResNetConfig | FastConfig


# Named configurations. `seed` is the original project's network (4,771,146 parameters).
ARCHS: dict[str, ArchConfig] = {
    "seed": parse_spec("resnet:5,4,3@64,128,256"),
    "tiny": ResNetConfig(blocks=(1, 1, 1), widths=(16, 32, 64)),
    "fast": FastConfig(widths=(64, 256, 256)),
    # The fast net's design grown towards airbench96 (two convs per residual branch) and kept under 5M.
    "best": FastConfig(widths=(128, 256, 320), depth=2),
}


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """A block's skip path: the identity, or 1x1 conv + BN when the shape changes (keys shortcut.0, shortcut.1)."""
    if stride == 1 and c_in == c_out:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when the shape changes)."""

    expansion = 1  # output channels per unit of width

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU (reduce to width) - conv3x3-BN-ReLU (strided) - conv1x1-BN (expand to 4 x width), plus a
    shortcut (identity, or 1x1 conv + BN when the shape changes): torchvision's ResNet-50 block."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Stem conv3x3 -> stages of blocks (stride 2 from the second stage on) -> global pool -> linear."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if len(config.blocks) != len(config.widths) or not config.blocks:
            raise UserError("a ResNet config needs one width per stage, e.g. blocks (5,4,3) and widths (64,128,256)")
        if config.block not in BLOCKS:
            raise UserError(f"unknown ResNet block '{config.block}'; use one of: {', '.join(BLOCKS)}")
        self.config = config
        block = BLOCKS[config.block]
        w0 = config.widths[0]
        self.conv1 = nn.Conv2d(3, w0, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        c_in = w0
        for i, (n, width) in enumerate(zip(config.blocks, config.widths, strict=True)):
            stride = 1 if i == 0 else 2
            c_out = width * block.expansion
            blocks = [block(c_in if j == 0 else c_out, width, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c_out
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
    """A named configuration, or the shape a spec string such as 'resnet:5,4,3@64,128,256' describes."""
    if arch in ARCHS:
        return ARCHS[arch]
    if ":" in arch:
        return parse_spec(arch)
    raise UserError(f"unknown arch '{arch}'; choose one of: {', '.join(ARCHS)}, or a spec such as resnet:5,4,3@64,128,256")


def safe_name(arch: str) -> str:
    """An arch name or spec as a file/folder name: 'resnet:5,4,3@64,128,256' -> 'resnet_5-4-3_64-128-256'."""
    return arch.replace(":", "_").replace("@", "_").replace(",", "-").replace(" ", "")


def build_model(arch: str | ArchConfig, allow_over_limit: bool = False) -> nn.Module:
    """Build a network by name or config; refuse >= 5M parameters unless explicitly allowed."""
    config = get_config(arch) if isinstance(arch, str) else arch
    model = config.build()
    n = count_params(model)
    if n >= PARAM_LIMIT and not allow_over_limit:
        raise UserError(
            f"this configuration has {n:,} parameters, over the project's {PARAM_LIMIT:,} limit; "
            "shrink it (from Python, build_model(..., allow_over_limit=True) opts out; the command line has no opt-out)"
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
        widths.append(int(state_dict[f"layer{stage}.0.conv1.weight"].shape[0]))  # a bottleneck's conv1 has its width
        stage += 1
    head = state_dict.get("linear.weight")
    if not blocks or head is None or head.ndim != 2:
        return None
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    return ResNetConfig(tuple(blocks), tuple(widths), int(head.shape[0]), block)


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


# --- analytic cost of a ResNet shape: no model is built, so thousands of shapes score in milliseconds ---------
def _conv_costs(c_in: int, c_out: int, k: int, side_out: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of a bias-free k x k conv with its BatchNorm (a scale and a shift per channel)."""
    return k * k * c_in * c_out + 2 * c_out, side_out * side_out * k * k * c_in * c_out


def _block_costs(block: str, c_in: int, width: int, side_in: int, stride: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of one block, as BasicBlock/Bottleneck above build it."""
    side = -(-side_in // stride)  # a stride-2 conv (3x3 padded by 1, or 1x1) gives ceil(side / 2)
    c_out = width * BLOCKS[block].expansion
    if block == "bottleneck":
        parts = [_conv_costs(c_in, width, 1, side_in), _conv_costs(width, width, 3, side), _conv_costs(width, c_out, 1, side)]
    else:
        parts = [_conv_costs(c_in, width, 3, side), _conv_costs(width, width, 3, side)]
    if stride != 1 or c_in != c_out:
        parts.append(_conv_costs(c_in, c_out, 1, side))
    return sum(p for p, _ in parts), sum(m for _, m in parts)


def resnet_costs(
    widths: tuple[int, ...], block: str = "basic", size: int = 32, num_classes: int = 10
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """A ResNet's (parameters, multiply-adds) as a fixed part plus a per-block part for each stage.

    For blocks (n_1, ..., n_S): total = fixed + sum_i n_i * per_block[i], exactly. Only the stage's first
    block differs from the rest (stride, input channels, shortcut conv); the fixed part holds that difference,
    the stem and the linear head.
    """
    expansion = BLOCKS[block].expansion
    params, macs = _conv_costs(3, widths[0], 3, size)
    params += (widths[-1] * expansion + 1) * num_classes
    macs += widths[-1] * expansion * num_classes
    per_block = []
    c_in, side = widths[0], size
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        first = _block_costs(block, c_in, width, side, stride)
        side = -(-side // stride)
        c_in = width * expansion
        rest = _block_costs(block, c_in, width, side, 1)
        params, macs = params + first[0] - rest[0], macs + first[1] - rest[1]
        per_block.append(rest)
    return (params, macs), per_block


def resnet_params(config: ResNetConfig) -> int:
    """Trainable parameters of a ResNet shape, computed without building it (equals count_params)."""
    (fixed, _), per_block = resnet_costs(config.widths, config.block, 32, config.num_classes)
    return fixed + sum(n * p for n, (p, _) in zip(config.blocks, per_block, strict=True))


def resnet_macs(config: ResNetConfig, size: int = 32) -> int:
    """Multiply-adds of a ResNet shape on one size x size image, without building it (equals macs_per_image)."""
    (_, fixed), per_block = resnet_costs(config.widths, config.block, size, config.num_classes)
    return fixed + sum(n * m for n, (_, m) in zip(config.blocks, per_block, strict=True))


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
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, (BasicBlock, Bottleneck)) and len(module.shortcut) == 2:
            module.shortcut = nn.Sequential(_fold(module.shortcut[0], module.shortcut[1]))
    return folded
