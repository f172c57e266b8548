"""Shared fixtures: CIFAR-10 batch files generated in the real pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"

# A distinct mean colour per class makes the generated classes learnable within seconds.
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
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(make_batch(per_batch, i), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(make_batch(n_test, 99), f)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated CIFAR-10 copy: 1,000 training and 200 test images."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))
