"""A small generated CIFAR-10 in the real pickle layout, for checks that must run without the data set.

Each class has its own mean colour, so a net learns the classes within a few steps; `resnet5m doctor` trains on it,
and the tests use it as their CIFAR-10.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .data import BATCHES_DIR, TEST_FILES, TRAIN_FILES

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [128, 128, 128]],
    dtype=np.float32,
)  # fmt: skip


def make_batch(n: int, seed: int) -> dict:
    """One batch dict exactly as the official files hold it: uint8 (n, 3072) rows, list labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    noise = rng.normal(0, 40, (n, 3, 32, 32))
    images = np.clip(PALETTE[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    return {
        b"batch_label": f"generated batch {seed}".encode(),
        b"labels": labels.tolist(),
        b"data": images.reshape(n, 3072),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, per_batch: int = 200, n_test: int = 200) -> Path:
    """Write data_batch_1..5 and test_batch under root/cifar-10-batches-py; return root."""
    folder = Path(root) / BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(TRAIN_FILES, start=1):
        with open(folder / name, "wb") as f:
            pickle.dump(make_batch(per_batch, i), f)
    with open(folder / TEST_FILES[0], "wb") as f:
        pickle.dump(make_batch(n_test, 99), f)
    return Path(root)
