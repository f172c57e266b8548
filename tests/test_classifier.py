"""resnet5m.load and the Classifier: preprocessing inside forward, predict on every input kind, names, specs and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_checkpoint import randomized

import resnet5m
from resnet5m.classifier import Classifier
from resnet5m.data import CLASSES, normalize
from resnet5m.errors import UserError
from resnet5m.evaluate import batched_logits
from resnet5m.inputs import read_image
from resnet5m.model import build_model, count_params
from resnet5m.weights import save_weights


def uint8_images(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, *size), dtype=np.uint8))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny net whose file records a recipe with flip + 1-px shift views and a calibrated temperature."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, randomized(build_model("tiny")), "tiny", recipe={"tta": True, "tta_shift": 1}, extra={"temperature": 2.0})
    return path


@pytest.fixture(scope="module")
def classifier(weights: Path) -> Classifier:
    return resnet5m.load(weights)


def test_forward_normalizes_uint8_and_float_pixels_alike(classifier: Classifier):
    x = uint8_images(6)
    with torch.no_grad():
        expected = classifier.net(normalize(x))  # what the bare network needs: the training normalization
        assert torch.allclose(classifier(x), expected, atol=1e-5)
        assert torch.equal(classifier(x.float() / 255), classifier(x))
        assert torch.equal(classifier(x[0]), classifier(x[:1]))  # one image (3, H, W) is a batch of one


def test_forward_resizes_any_size_as_predict_does(classifier: Classifier, tmp_path: Path):
    big = uint8_images(1, (96, 64))
    Image.fromarray(big[0].permute(1, 2, 0).numpy()).save(tmp_path / "big.png")
    as_read, resized = read_image(tmp_path / "big.png")  # how `resnet5m predict` reads a file of another size
    assert resized
    with torch.no_grad():
        assert torch.equal(classifier(big), classifier(as_read))
        assert classifier(uint8_images(3, (17, 50))).shape == (3, len(CLASSES))


@pytest.mark.parametrize(
    "bad, message",
    [
        (uint8_images(2).float(), "run from 0 to 255: pass uint8 images as they are, float ones divided by 255"),
        (normalize(uint8_images(2)), "not normalized"),
        (uint8_images(2).long(), r"got torch.int64; pass x.to\(torch.uint8\)"),
        (uint8_images(2).permute(0, 2, 3, 1), r"got shape \(2, 32, 32, 3\); for channels-last images pass x.permute"),
        (np.zeros((2, 3, 32, 32), np.uint8), "as a tensor, got a ndarray; predict\\(\\) also reads arrays"),
    ],
)
def test_forward_refuses_pixels_it_would_misread(classifier: Classifier, bad, message):
    with pytest.raises(UserError, match=message):
        classifier(bad)


def test_predict_takes_tensors_arrays_pil_images_and_paths_alike(classifier: Classifier, tmp_path: Path):
    x = uint8_images(4)
    hwc = x.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(hwc):
        Image.fromarray(image).save(folder / f"{i}.png")
    np.save(tmp_path / "rows.npy", hwc)
    labels, probs = classifier.predict(x)
    assert labels.shape == (4,) and probs.shape == (4, len(CLASSES))
    assert torch.allclose(probs.sum(1), torch.ones(4, dtype=probs.dtype)) and torch.equal(labels, probs.argmax(1))
    same = [
        x.float() / 255,
        hwc,  # channels last, as PIL and OpenCV give arrays
        x.reshape(4, 3072).numpy(),  # CIFAR rows
        [Image.open(folder / f"{i}.png") for i in range(4)],
        folder,
        str(tmp_path / "rows.npy"),
        [str(folder / "0.png"), x[1], hwc[2], Image.open(folder / "3.png")],  # mixed kinds in one list
    ]
    for images in same:
        assert torch.allclose(classifier.predict(images)[1], probs, atol=1e-6), type(images)


def test_predict_uses_the_recipe_views_and_the_stored_temperature(classifier: Classifier):
    x = uint8_images(5)
    logits, _ = batched_logits(classifier.net, x, tta=True, tta_shift=1, precision="fp32", progress=False)
    _, probs = classifier.predict(x, batch_size=2)  # batches of 2 give the same as one of 5
    assert torch.allclose(probs, (logits / 2.0).softmax(1), atol=1e-5)
    assert not torch.allclose(probs, classifier(x).softmax(1), atol=1e-3)  # forward alone is one view, no temperature


def test_predict_restores_training_mode_and_forward_trains(classifier: Classifier, weights: Path):
    tuned = resnet5m.load(weights)
    tuned.train()
    tuned.predict(uint8_images(2))
    assert tuned.training and tuned.net.training
    loss = F.cross_entropy(tuned(uint8_images(4, (40, 40))), torch.tensor([0, 1, 2, 3]))
    loss.backward()  # fine-tuning goes through the preprocessing into the bare network
    assert all(p.grad is not None for p in tuned.net.parameters() if p.requires_grad)


def test_the_module_is_the_network_with_its_metadata(classifier: Classifier, weights: Path):
    assert not classifier.training and classifier.classes == CLASSES and classifier.arch == "tiny"
    assert classifier.meta["temperature"] == 2.0 and classifier.meta["recipe"]["tta_shift"] == 1
    assert set(classifier.state_dict()) == {f"net.{k}" for k in classifier.net.state_dict()}  # mean/std not saved
    assert count_params(classifier) == count_params(classifier.net)


def test_load_takes_a_common_checkpoint_layout(tmp_path: Path):
    model = randomized(build_model("tiny"))
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, tmp_path / "c.pth")
    loaded = resnet5m.load(str(tmp_path / "c.pth"))
    x = uint8_images(2)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(normalize(x)), atol=1e-5)


def test_untrained_names_and_specs(tmp_path: Path):
    spec = "resnet:1,1,1@8,16,32"
    fresh = resnet5m.load(spec, pretrained=False)
    assert fresh.arch == spec and not fresh.training and fresh(uint8_images(1)).shape == (1, 10)
    assert resnet5m.load("fast", pretrained=False).meta["recipe"]["tta_shift"] == 1  # the preset's views
    with pytest.raises(UserError, match="no trained weights for 'tiny': the shipped ones are seed, fast, best"):
        resnet5m.load("tiny")
    with pytest.raises(UserError, match="unknown arch 'bset'"):
        resnet5m.load("bset")
    with pytest.raises(UserError, match="not found; pass --weights"):
        resnet5m.load(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="pretrained=False builds an untrained network"):
        resnet5m.load(tmp_path / "missing.pt", pretrained=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_a_missing_device_is_one_line(weights: Path):
    with pytest.raises(UserError, match="no CUDA GPU"):
        resnet5m.load(weights, device="cuda")
