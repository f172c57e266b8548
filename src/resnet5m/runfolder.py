"""The run folder on disk: the per-epoch checkpoint and history files, written atomically and read back checked."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .config import RUNTIME_FIELDS, TrainConfig
from .errors import UserError
from .files import atomic_save, write_text

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
RUN_FORMAT = "resnet5m-run"


def write_run(out: Path, state: dict, history: list[dict]) -> None:
    """Replace out/checkpoint.pt and out/history.json; a crash mid-write leaves the previous pair intact."""
    atomic_save(state, out / CHECKPOINT)
    write_text(out / HISTORY, json.dumps(history, indent=1))


def read_run(out: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """The checkpoint in out, refused with one line when missing, unreadable, foreign or of another recipe."""
    path = out / CHECKPOINT
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as e:
        raise UserError(f"nothing to resume: {path} does not exist; drop --resume to start a new run") from e
    except Exception as e:
        raise UserError(f"cannot resume: {path} is unreadable ({type(e).__name__}); start a new --out") from e
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise UserError(f"cannot resume: {path} is not a resnet5m training checkpoint")
    saved = state["config"]
    changed = recipe_changes(saved, cfg)
    if changed:
        raise UserError(
            f"cannot resume {path}: the recipe differs in {', '.join(changed)} "
            f"(saved: {', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); pass the same flags"
        )
    return state


def recipe_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """The fields, other than runtime ones, where cfg departs from a saved config."""
    # A field added to TrainConfig after the checkpoint was written counts as its default.
    old = {f.name: saved.get(f.name, f.default) for f in fields(TrainConfig)}
    return [k for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS and old[k] != v]
