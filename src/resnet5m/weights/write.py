"""Writing weights in our format: the state dict with what the run knows about it, staged so no half file is left."""

from __future__ import annotations

import datetime
import os

import torch
from torch import nn

from ..files import atomic_save, sha256_of
from ..model import ArchConfig, arch_name, count_params
from .layout import FORMAT, FORMAT_VERSION, unwrap_state_dict

# The keys save_weights writes itself; a rewrite of a file (publish, calibrate, an fp16 export) carries the others over.
WRITTEN = {"format", "format_version", "arch", "config", "params", "metrics", "recipe", "history", "torch_version", "created"}


def carried_over(meta: dict) -> dict:
    """A source file's own records (training command, seed, data sizes, temperature, ...) for a rewrite of it to keep."""
    return {k: v for k, v in meta.items() if k not in WRITTEN}


def save_weights(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str | None = None,
    *,
    metrics: dict | None = None,
    recipe: dict | None = None,
    history: list | None = None,
    extra: dict | None = None,
    half: bool = False,
    overwrite: bool = False,
) -> str:
    """Save weights with metadata in our format; return the file's sha256."""
    config: ArchConfig = model.config
    state = {k: v.detach().cpu() for k, v in unwrap_state_dict(model.state_dict()).items()}
    if half:  # storage only: the loader casts back to fp32
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch or arch_name(config),
        "config": config.to_dict(),
        "params": count_params(model),
        "state_dict": state,
        "metrics": metrics or {},
        "recipe": recipe or {},
        "history": history or [],
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_save(payload, path, overwrite=overwrite)
    return sha256_of(path)
