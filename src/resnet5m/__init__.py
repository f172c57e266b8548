"""resnet5m: residual networks under 5M parameters for CIFAR-10."""

from .classifier import Classifier, load
from .config import TrainConfig
from .data import CLASSES, load_split
from .errors import UserError
from .evaluate import evaluate
from .model import ARCHS, build_model, count_params
from .train import train
from .weights import load_weights, save_weights

__version__ = "0.1.0"
__all__ = [
    "ARCHS",
    "CLASSES",
    "Classifier",
    "TrainConfig",
    "UserError",
    "build_model",
    "count_params",
    "evaluate",
    "load",
    "load_split",
    "load_weights",
    "save_weights",
    "train",
]
