"""CIFAR-10 from the standard python-pickle layout, as uint8 tensors.

The reader is our own (not torchvision.datasets.CIFAR10) so that copies whose files differ from
the official md5s, such as ../shared/cifar10, load too; the official archive is still fetched
with torchvision's md5-verified download.
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The --data-dir help of every command, next to the lookup order it describes (resolve_data_dir).
DATA_DIR_HELP = "folder holding cifar-10-batches-py/ (default: $RESNET5M_DATA, else ./data)"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ENV_VAR = "RESNET5M_DATA"
VAL_SIZE = 5000  # `resnet5m train`'s default validation split: the last 5,000 training images


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $RESNET5M_DATA, else ./data."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or "data"
    return Path(data_dir).expanduser()


def find_batches(root: Path) -> Path | None:
    """The folder holding the batch files: root/cifar-10-batches-py, or root itself."""
    for candidate in (root / BATCHES_DIR, root):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def nested_copy(root: Path) -> Path | None:
    """A copy one level below root (root/NAME/cifar-10-batches-py): --data-dir named the folder above the right one."""
    if not root.is_dir():
        return None
    return next((c.parent for c in sorted(root.glob(f"*/{BATCHES_DIR}")) if find_batches(c.parent) == c), None)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a readable CIFAR-10 batch file ({type(e).__name__}); re-download the data") from e
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserError(f"{path}: expected {data.shape[0]} labels in 0..9")
    # Rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major: a plain reshape.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def download(root: Path) -> None:
    """Fetch and extract the official archive into root (md5-verified by torchvision).

    A failed download removes the folders it created: a mistyped --data-dir leaves nothing behind.
    """
    from torchvision.datasets.utils import download_and_extract_archive

    missing = [p for p in (root, *root.parents) if not p.exists()]  # root and the ancestors the download will create
    try:
        download_and_extract_archive(URL, download_root=str(root), md5=ARCHIVE_MD5)
    except Exception as e:  # network errors come in many types; each ends in the same advice
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)  # new with this call: everything in it is the download's
        typo = f"; {root} did not exist: is the name right?" if missing else ""
        raise UserError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); "
            f"check the network, or pass --data-dir / set {ENV_VAR} to an existing copy{typo}"
        ) from e


def load_split(
    split: str, data_dir: str | os.PathLike | None = None, download_missing: bool = False, val_size: int = VAL_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load 'train' (all data_batch_*), 'val' (the last val_size training images, as `train --val-size` holds
    them out) or 'test' (test_batch) as (uint8 images, int64 labels)."""
    if split == "val":
        images, labels = load_split("train", data_dir, download_missing)
        if not 0 < val_size < len(labels):
            raise UserError(f"--val-size must be in 1..{len(labels) - 1} (the training split has {len(labels):,} images)")
        return images[-val_size:], labels[-val_size:]
    if split not in ("train", "test"):
        raise UserError(f"unknown split '{split}'; use 'train', 'val' or 'test'")
    root = resolve_data_dir(data_dir)
    folder = find_batches(root)
    if folder is None and (nested := nested_copy(root)) is not None:
        raise UserError(f"CIFAR-10 not in {root}, but found in {nested}: pass --data-dir {nested}")
    if folder is None and download_missing:
        download(root)
        folder = find_batches(root)
    if folder is None:
        raise UserError(
            f"CIFAR-10 not found in {root} (looked for {root / BATCHES_DIR}); "
            f"pass --data-dir DIR or set {ENV_VAR}=DIR pointing at a folder holding {BATCHES_DIR}/, or allow --download"
        )
    files = TRAIN_FILES if split == "train" else TEST_FILES
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}; re-download CIFAR-10 or point --data-dir at a full copy")
    parts = [read_batch(folder / name) for name in files]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def model_input(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> normalized float (B, 3, size, size), channels_last; antialiased resize below 32 px."""
    x = normalize(images)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD as (1, 3, 1, 1) tensors on a device, built once: a host-to-device copy per batch would stall a GPU."""
    with torch.inference_mode(False):  # first built inside evaluation's inference mode, later used in training too
        return torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalized float tensor on the same device."""
    mean, std = _mean_std(images.device)
    return ((images.float() / 255.0 - mean) / std).to(dtype)
