import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, make_batch, write_cifar

from resnet5m.data import find_batches, load_split, normalize, read_batch, resolve_data_dir
from resnet5m.errors import UserError


def test_loads_generated_batches(cifar_dir):
    images, labels = load_split("train", cifar_dir)
    assert images.shape == (1000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (1000,) and labels.dtype == torch.int64
    test_images, _ = load_split("test", cifar_dir)
    assert test_images.shape == (200, 3, 32, 32)


def test_pixels_keep_the_channel_planes(tmp_path):
    batch = make_batch(3, seed=5)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    images, labels = read_batch(tmp_path / "test_batch")
    row = batch[b"data"][1]
    assert images[1, 0, 0, 0] == row[0] and images[1, 1, 0, 0] == row[1024] and images[1, 2, 31, 31] == row[3071]
    assert labels.tolist() == batch[b"labels"]


def test_batches_folder_may_be_given_directly(cifar_dir):
    assert find_batches(cifar_dir / "cifar-10-batches-py") == cifar_dir / "cifar-10-batches-py"
    assert len(load_split("test", cifar_dir / "cifar-10-batches-py")[1]) == 200


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RESNET5M_DATA", raising=False)
    assert str(resolve_data_dir()) == "data"
    monkeypatch.setenv("RESNET5M_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("elsewhere").name == "elsewhere"


def test_missing_data_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=f"CIFAR-10 not found in {tmp_path}.*--data-dir"):
        load_split("test", tmp_path, download_missing=False)


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match="could not download CIFAR-10.*--data-dir"):
        load_split("test", tmp_path, download_missing=True)


def test_data_dir_one_level_too_high_names_the_right_one(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    write_cifar(tmp_path / "shared" / "cifar10", per_batch=2, n_test=2)
    monkeypatch.setattr(tvu, "download_and_extract_archive", lambda *a, **k: pytest.fail("must not download"))
    right = tmp_path / "shared" / "cifar10"
    with pytest.raises(UserError) as info:
        load_split("test", tmp_path / "shared", download_missing=True)
    assert str(info.value) == f"CIFAR-10 not in {tmp_path / 'shared'}, but found in {right}: pass --data-dir {right}"
    assert len(load_split("test", right)[1]) == 2 and len(load_split("test", right / "cifar-10-batches-py")[1]) == 2


def test_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def half_then_offline(url, download_root, **kwargs):
        Path(download_root).mkdir(parents=True)
        (Path(download_root) / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", half_then_offline)
    with pytest.raises(UserError, match=r"could not download.*check the network.*typo/data did not exist: is the name right\?"):
        load_split("test", tmp_path / "typo" / "data", download_missing=True)
    assert list(tmp_path.iterdir()) == []  # typo/ was made by the download, so it went with it
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not download"):
        load_split("test", tmp_path / "empty", download_missing=True)
    assert (tmp_path / "empty").is_dir()  # the user's own folder stays


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "expected uint8"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "expected uint8 data of shape"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels in 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels in 0..9"),
        ({b"nothing": 1}, "not a readable CIFAR-10 batch"),
    ],
)
def test_bad_batch_files_are_refused(tmp_path, batch, message):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UserError, match=message):
        load_split("test", tmp_path)


def test_normalize_matches_the_constants():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([(1 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, (1 - 0.4465) / 0.2616]))


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(), reason="../shared/cifar10 not present")
def test_shared_copy_loads_fast_and_complete():
    start = time.perf_counter()
    images, labels = load_split("train", SHARED)
    assert time.perf_counter() - start < 5
    assert images.shape == (50_000, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [5000] * 10
    test_images, test_labels = load_split("test", SHARED)
    assert len(test_labels) == 1017 and test_images.shape[1:] == (3, 32, 32)


def test_normalize_builds_its_mean_and_std_once_per_device(monkeypatch):
    # A tensor built from Python numbers on a GPU is a host-to-device copy: once per device, not once per batch.
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first = normalize(images)
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (made.append(a), real(*a, **k))[1])
    for _ in range(3):
        assert torch.equal(normalize(images), first)
    assert made == []
    with torch.inference_mode():  # built there first, the cached tensors must still serve training
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8, device="meta"))
    x = torch.zeros(1, 3, 2, 2, device="meta", requires_grad=True)
    assert (normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8, device="meta")) * x).requires_grad
