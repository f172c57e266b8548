import pytest
import torch

from resnet5m import augment


def test_zero_offset_crop_is_the_padded_corner_and_centre_crop_is_identity():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    padded = augment.reflect_pad(images, 4)
    assert padded.shape == (2, 3, 40, 40)
    centre = {"dy": torch.tensor([4, 0]), "dx": torch.tensor([4, 0]), "flip": torch.tensor([False, False])}
    out = augment.apply(padded, centre)
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], padded[1, :, :32, :32])
    assert torch.equal(padded[0, :, 4, 3], images[0, :, 0, 1])  # reflect: mirrored, border not repeated


def test_flip_and_cutout():
    images = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    padded = augment.reflect_pad(images, 0)
    params = {"dy": torch.tensor([0]), "dx": torch.tensor([0]), "flip": torch.tensor([True]),
              "cy": torch.tensor([10]), "cx": torch.tensor([20])}  # fmt: skip
    out = augment.apply(padded, params, cutout=4)
    assert (out[0, :, 8:12, 18:22] == 0).all()  # rows 10-2 .. 10+1, columns 20-2 .. 20+1
    assert torch.equal(out[0, :, 0], images[0, :, 0].flip(-1))


@pytest.mark.parametrize("size", [1, 4, 7, 8])
def test_cutout_cuts_exactly_size_by_size(size):
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    params = {"dy": torch.tensor([0]), "dx": torch.tensor([0]), "flip": torch.tensor([False]),
              "cy": torch.tensor([16]), "cx": torch.tensor([16])}  # fmt: skip
    hole = augment.apply(images, params, cutout=size)[0, 0] == 0
    assert hole.sum() == size * size
    rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
    assert len(rows) == len(cols) == size and rows[0] == cols[0] == 16 - size // 2


def test_draws_are_reproducible():
    a = augment.draw_params(8, 4, 8, torch.Generator().manual_seed(1))
    b = augment.draw_params(8, 4, 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["dy"].max() <= 8 and a["dy"].min() >= 0
