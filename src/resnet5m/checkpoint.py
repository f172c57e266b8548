"""The import path of save_weights before resnet5m.weights held every weights file's code; train.py still uses it."""

from .weights import save_weights

__all__ = ["save_weights"]
