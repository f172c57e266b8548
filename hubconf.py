"""torch.hub entry points: `torch.hub.load("resnet5m/resnet5m", "best")` returns a trained CIFAR-10 classifier.

Each entry returns what `resnet5m.load(name)` returns: a Classifier (an nn.Module in eval mode) that takes
uint8 (0-255) or float (0-1) images (N, 3, H, W) of any size, normalizes them itself and returns logits;
`.predict(x)` gives classes and probabilities, `.net` is the bare network. The weights come from this
checkout's weights/ when present, else from the repository (or $RESNET5M_WEIGHTS_URL) into torch.hub's
cache, checked against the sha256 in the package's manifest.
"""

import pathlib
import sys

dependencies = ["torch", "torchvision"]

# torch.hub imports this file from a downloaded checkout, which is not installed: its package is under src/.
# (Only modules are imported at the top level: torch.hub.list() offers every callable here as an entry.)
_SRC = str(pathlib.Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import resnet5m  # noqa: E402


def seed(pretrained: bool = True, **kwargs):
    """The seed net: the original project's ResNet (BasicBlocks 5, 4, 3 at widths 64, 128, 256), our recipe."""
    return resnet5m.load("seed", pretrained=pretrained, **kwargs)


def fast(pretrained: bool = True, **kwargs):
    """The fast net: an airbench-style network of 1.97M parameters, trained in 20 epochs."""
    return resnet5m.load("fast", pretrained=pretrained, **kwargs)


def best(pretrained: bool = True, **kwargs):
    """The best net: the most accurate shipped network (4.38M parameters, 50 epochs)."""
    return resnet5m.load("best", pretrained=pretrained, **kwargs)
