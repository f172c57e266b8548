"""google.colab.files: no browser, so nothing is ever uploaded or downloaded."""

from __future__ import annotations


def upload() -> dict[str, bytes]:
    """Colab returns {file name: bytes} of the files the user picked; here none are."""
    return {}


def download(filename: str) -> None:
    """Colab sends the file to the browser; here there is none."""
