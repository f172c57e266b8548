"""Weights files, in one place: reading every format, writing ours, the manifest of the shipped files, finding them.

- layout: what a torch file may hold (our format, a bare state dict, the common checkpoint wrappers);
- read: loading one safely (weights_only) into the model it describes;
- write: our format;
- formats: every format the commands run (int8, TorchScript and ONNX too), and placing it on a device;
- manifest: the shipped weights with their sha256 and measured figures (manifest.json);
- shipped: a shipped file from a checkout's weights/, else downloaded and verified.

The rest of the package imports from here; these modules import only the layers below them (errors, files,
model, config, quantize, runtime), so no import runs back into the commands that use them.
"""

from .formats import INT8_FORMAT, INT8_FORMAT_VERSION, META_KEY, ONNX_HINT, LoadedModel, detect_format, load_any, open_weights
from .manifest import MANIFEST, Shipped, entry_for
from .read import LoadedWeights, load_weights, read_checkpoint
from .shipped import REPO, REPO_URL, URL_ENV, checkout_candidates, default_weights, raw_weights_url, shipped_file
from .write import carried_over, save_weights

__all__ = [
    "INT8_FORMAT",
    "INT8_FORMAT_VERSION",
    "MANIFEST",
    "META_KEY",
    "ONNX_HINT",
    "REPO",
    "REPO_URL",
    "URL_ENV",
    "LoadedModel",
    "LoadedWeights",
    "Shipped",
    "checkout_candidates",
    "default_weights",
    "detect_format",
    "entry_for",
    "load_any",
    "load_weights",
    "open_weights",
    "raw_weights_url",
    "read_checkpoint",
    "carried_over",
    "save_weights",
    "shipped_file",
]
