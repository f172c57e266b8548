"""Where the shipped weights live: weights/resnet5m_<arch>.pt in the working folder or the source checkout.

Kept apart from the CLI so that every command (evaluate, export) and the notebook helpers (sources) can
find them without importing the command-line module.
"""

from __future__ import annotations

from pathlib import Path

from .config import weights_name
from .errors import UserError
from .model import get_config

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"  # the repository's weights/ in a source checkout


def default_weights(arch: str) -> Path:
    """The shipped weights for an arch: ./weights/ first, then the source checkout's weights/."""
    get_config(arch)  # an unknown (mistyped) arch is named as such, not as missing weights
    name = weights_name(arch)  # the name `resnet5m train` gives its final weights
    for folder in (Path("weights"), WEIGHTS_DIR):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"no shipped weights {name} found in ./weights or {WEIGHTS_DIR}; pass --weights PATH")
