"""A stand-in for Colab's `google.colab`, for running the notebook's Colab branch in CI.

Only tests/test_colab_mode.py puts tests/colab_standin on a kernel's PYTHONPATH; it is never importable
otherwise. `google/` has no __init__.py, so it merges with other `google` namespace packages (protobuf).
"""

from . import drive, files

__all__ = ["drive", "files"]
