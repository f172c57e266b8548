"""Reading a torch weights file safely and building the model it describes.

torch.load runs with weights_only=True, so nothing but tensors and plain containers is unpickled; each way a
file can fail (a pickled model, an unsupported pickle protocol, junk or a truncated download, keys of another
architecture) is one UserError saying what to do. The accepted layouts are those of layout.py.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..files import sha256_of
from ..model import ARCHS, arch_name, build_model, config_from_dict, get_config, infer_config
from .layout import split_payload


def _torch_load(path: Path, device: torch.device | str) -> Any:
    # torch warns about what it reads (e.g. "Detected pickle protocol 4 ... the weights_only Unpickler might not
    # support ...") just before it fails on it; the warnings are kept back so that a failure is our one line, which
    # names the protocol when that is the reason. A file that loads needs no such notice.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e) and "GLOBAL" in str(e):
                raise UserError(
                    f"{path} holds a pickled Python object (e.g. a whole model saved with torch.save(model)), "
                    "which is not loaded for safety; re-save it with torch.save(model.state_dict(), path)"
                ) from e
            protocol = next((m[1] for w in caught if (m := re.search(r"pickle protocol (\d+)", str(w.message)))), None)
            if protocol:
                raise UserError(
                    f"{path} was pickled with protocol {protocol} (pickle.dump, or torch.save with pickle_protocol), which "
                    "the safe loader does not read; re-save it with torch.save(model.state_dict(), path)"
                ) from e
            raise UserError(f"{path} is not a PyTorch checkpoint or is truncated; download or copy it again") from e
        except Exception as e:  # the unpickler fails on junk bytes with KeyError, EOFError, RuntimeError, ...
            raise UserError(f"{path} is not a PyTorch checkpoint or is truncated; download or copy it again") from e


def _fitting_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The named arch whose parameter names and shapes are exactly those of state, if one is."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, config in ARCHS.items():
        with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
            expected = config.build().state_dict()
        if shapes == {k: tuple(v.shape) for k, v in expected.items()}:
            return name
    return None


def _torchvision_style(state: dict[str, torch.Tensor]) -> bool:
    return {"conv1.weight", "bn1.weight", "fc.weight"} <= state.keys()


def _foreign(state: dict[str, torch.Tensor]) -> str:
    """What to say of a state dict that fits no resnet5m network and no ResNet of the original layout."""
    keys = ", ".join(list(state)[:3])
    if _torchvision_style(state):
        return (f"a torchvision-style ResNet (keys {keys}, ...), not a resnet5m network, whose layers it does not map onto; "
                "fine-tune resnet5m.load(...).net instead")  # fmt: skip
    return (f"its keys ({keys}, ...) fit no resnet5m network (seed, fast, best, tiny) and no ResNet of the original "
            "project's layout; if it is a resnet5m network of a custom shape, pass --arch SPEC")  # fmt: skip


def _lookalike(state: dict[str, torch.Tensor], arch: str, recorded: str | None) -> str:
    """What the weights are, for a mismatch message, and the --arch that loads them."""
    if recorded in ARCHS and recorded != arch:
        return f"the file records arch '{recorded}': pass --arch {recorded} or drop --arch"
    config = infer_config(state)
    shape = f" (blocks {list(config.blocks)}, widths {list(config.widths)})" if config is not None else ""
    name = _fitting_arch(state) or (arch_name(config) if config is not None else None)
    if name and name != arch:
        return f"it looks like arch '{name}'{shape}: pass --arch {name} or drop --arch"
    if config is not None:
        return f"it looks like a ResNet{shape}: drop --arch to load it"
    return f"it is {_foreign(state)}" if _torchvision_style(state) else "it is not a resnet5m/original-format ResNet"


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path, recorded: str | None) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        if mismatched:
            parts.append(f"shape mismatch at {mismatched[:3]}")
        raise UserError(f"{path} does not fit arch '{arch}': {'; '.join(parts)}; {_lookalike(state, arch, recorded)}")


@dataclass
class LoadedWeights:
    """A model with its weights loaded, plus what the file said about itself."""

    model: nn.Module
    arch: str
    sha256: str
    meta: dict = field(default_factory=dict)


def read_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", expected_sha256: str | None = None
) -> tuple[Any, str]:
    """The object a .pt file holds (torch.load with weights_only=True) and the file's sha256, checked when expected."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found; pass --weights PATH to an existing .pt file")
    digest = sha256_of(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise UserError(f"{path} has sha256 {digest}, expected {expected_sha256}; the file is corrupt or not the one published")
    return _torch_load(path, device), digest


def weights_from(
    obj: Any, path: str | os.PathLike, sha256: str, arch: str | None = None, device: torch.device | str = "cpu"
) -> LoadedWeights:
    """Build the model a loaded checkpoint object describes (any accepted layout) and load its weights."""
    path = Path(path)
    state, meta = split_payload(obj, path)
    if arch is None:
        if "config" in meta:
            config = config_from_dict(meta["config"])
        elif meta.get("arch") in ARCHS:
            config = get_config(meta["arch"])
        else:
            fitting = _fitting_arch(state)
            config = get_config(fitting) if fitting else infer_config(state)
        if config is None:
            raise UserError(f"{path}: {_foreign(state)}")
        arch = meta.get("arch") or arch_name(config) or "custom"
    else:
        config = get_config(arch)
    model = build_model(config, allow_over_limit=True)
    _check_keys(model, state, arch, path, meta.get("arch"))
    # fp16-stored weights go back to fp32; integer buffers (num_batches_tracked) keep their dtype.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return LoadedWeights(model.to(device), arch, sha256, meta)


def load_weights(
    path: str | os.PathLike,
    arch: str | None = None,
    device: torch.device | str = "cpu",
    expected_sha256: str | None = None,
) -> LoadedWeights:
    """Load a weights file safely (weights_only=True), checking its sha256 when one is expected."""
    obj, digest = read_checkpoint(path, device, expected_sha256)
    return weights_from(obj, path, digest, arch, device)
