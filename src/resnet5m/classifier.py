"""`resnet5m.load`: a trained network that takes images as they come, prepares them itself, and predicts.

The bare networks expect 32x32 inputs normalized with the training statistics (data.normalize); fed raw
pixels they answer confidently and wrongly, without a warning. A Classifier resizes and normalizes inside
its forward, so that step cannot be forgotten, and refuses float pixels that are not on a 0-1 scale.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .config import recipe
from .data import CLASSES, MEAN, STD
from .errors import UserError
from .evaluate import predict_logits, recipe_views, temperature_of
from .inputs import as_images, check_pixels, fit_size
from .model import build_model, get_config
from .runtime import pick_device, prepare
from .weights import MANIFEST, open_weights, shipped_file

WEIGHTS_SUFFIXES = (".pt", ".pth", ".ts", ".onnx")


class Classifier(nn.Module):
    """A CIFAR-10 network with its preprocessing: uint8 (0-255) or float (0-1) images (N, 3, H, W) -> logits.

    Images of any size are resized to 32x32 with antialiasing (as `resnet5m predict` resizes files) and
    normalized inside forward. `net` is the bare network (normalized 32x32 input), e.g. for fine-tuning;
    `meta` is what its weights file records (recipe, metrics, history); `classes` names the 10 outputs.
    """

    classes = CLASSES

    def __init__(self, net: nn.Module, meta: dict | None = None, arch: str = "custom") -> None:
        super().__init__()
        self.net = net
        self.meta = dict(meta or {})
        self.arch = arch
        # buffers, so that .to(device) moves them; not persistent, so that state_dict() is the network's alone
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """What `net` takes: the batch on this classifier's device, resized to 32x32, scaled to 0-1, normalized."""
        x = fit_size(check_pixels(images).to(self.mean.device))  # uint8 is resized as uint8, as predict resizes files
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of uint8 (0-255) or float (0-1) images (N, 3, H, W), without test-time views."""
        return self.net(self.normalized(images))

    @torch.inference_mode()
    def predict(self, images: object, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(class indices (N,), probabilities (N, 10)) on the CPU, as `resnet5m predict` computes them.

        Takes tensors, numpy arrays, PIL images, paths (files, folders, globs, .npy/.npz, CIFAR pickles) or a
        list of them; averages the test-time views of the weights' recipe and applies the temperature the file
        records (`resnet5m calibrate`). Runs in fp32 in eval mode; the mode is restored afterwards.
        """
        batch = as_images(images)
        tta, shift = recipe_views(self.meta)
        was_training = self.training
        self.eval()
        try:
            logits = [
                predict_logits(self.net, self.normalized(batch[i : i + batch_size]), tta, shift).float().cpu()
                for i in range(0, len(batch), batch_size)
            ]
        finally:
            self.train(was_training)
        probs = (torch.cat(logits) / temperature_of(self.meta)).softmax(1)
        return probs.argmax(1), probs


def load(
    name_or_path: str | os.PathLike = "best", *, device: torch.device | str | None = None, pretrained: bool = True
) -> Classifier:
    """A Classifier in eval mode, on `device` (default: the CPU; int8 and ONNX files run on the CPU only).

    name_or_path: `seed`, `fast` or `best`, the shipped networks (from a checkout's weights/, else downloaded
    once into torch.hub's cache and checked against the manifest's sha256); a path to any weights file
    `resnet5m evaluate` reads; or, with pretrained=False, an architecture name or spec such as
    `resnet:4,4,3@64,128,256`, built with random weights.
    """
    where = str(device) if device is not None else "cpu"
    if _is_path(name_or_path):
        if not pretrained:
            raise UserError(f"pretrained=False builds an untrained network from a name or spec, not from a file: {name_or_path}")
        return _from_file(Path(name_or_path), where)
    name = str(name_or_path)
    if not pretrained:
        dev = pick_device(where)
        meta = {"arch": name, "recipe": asdict(recipe(name))}  # the recipe it would train with: its test-time views
        return Classifier(prepare(build_model(name), dev), meta, name).to(dev).eval()
    if name not in MANIFEST:
        get_config(name)  # an unknown name gets the list of architectures
        raise UserError(
            f"no trained weights for '{name}': the shipped ones are {', '.join(MANIFEST)}; "
            "pass pretrained=False for an untrained network of that shape, or the path of a weights file"
        )
    return _from_file(shipped_file(name), where)


def _is_path(name_or_path: str | os.PathLike) -> bool:
    """A path rather than a name: a PathLike, an existing file, or text that only a path would be."""
    if isinstance(name_or_path, os.PathLike):
        return True
    if name_or_path in MANIFEST:
        return False
    path = Path(name_or_path)
    return path.exists() or path.suffix.lower() in WEIGHTS_SUFFIXES or os.sep in name_or_path or "/" in name_or_path


def _from_file(path: Path, device: str) -> Classifier:
    loaded, net, dev = open_weights(path, None, device)  # refuses an int8 or ONNX file on a GPU in one line
    return Classifier(net, loaded.meta, loaded.arch).to(dev).eval()
