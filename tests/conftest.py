"""Shared fixtures: CIFAR-10 batch files generated in the real pickle layout (resnet5m.synthetic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet5m.synthetic import make_batch, write_cifar

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"
__all__ = ["SHARED", "make_batch", "write_cifar"]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated CIFAR-10 copy: 1,000 training and 200 test images."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))
