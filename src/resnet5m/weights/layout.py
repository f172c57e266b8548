"""What a torch weights file may hold: our format, a bare state dict, or a state dict in a common wrapper.

Our format is a plain dict (loadable with weights_only=True): the state dict under `state_dict`, next to
the metadata (arch, config, recipe, history, metrics). Files from elsewhere usually hold a bare state dict
(the original project's), or a training checkpoint with it under one of STATE_KEYS, with the `module.`
prefix of DataParallel/DDP or the `_orig_mod.` prefix of torch.compile on every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

FORMAT = "resnet5m-weights"
FORMAT_VERSION = 1
# Where common training checkpoints keep the model's state dict, looked up in this order. `model` is also the
# key of our own run folder's checkpoint.pt, which records its arch next to it.
STATE_KEYS = ("model_state_dict", "state_dict", "net", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of tensors."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `module.` / `_orig_mod.` prefixes shared by every key, nested in either order."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def split_payload(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict without wrapper prefixes, metadata) of any accepted layout; anything else is one UserError."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return unwrap_state_dict(obj["state_dict"]), {k: v for k, v in obj.items() if k != "state_dict"}
    if is_state_dict(obj):
        return unwrap_state_dict(obj), {}
    if isinstance(obj, dict):
        key = next((k for k in STATE_KEYS if is_state_dict(obj.get(k))), None)
        if key is not None:
            arch = obj.get("arch")
            return unwrap_state_dict(obj[key]), {"arch": arch} if isinstance(arch, str) else {}
    raise UserError(
        f"{path} holds no model state dict (found {_found(obj)}); expected resnet5m's format, "
        f"a state dict, or a dict with one under {', '.join(repr(k) for k in STATE_KEYS)}; "
        "re-save it with torch.save(model.state_dict(), path)"
    )


def _found(obj: Any) -> str:
    """What a refused file holds, for its message: its top-level keys (the first 8), or its type."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    return f"keys {keys}{', ...' if len(obj) > 8 else ''}"
