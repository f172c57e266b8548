"""pyproject.toml: the license as an SPDX expression, and a setuptools that builds it (PEP 639 support came in 77)."""

import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_built_by_a_recent_setuptools():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))  # PEP 639 forbids both


def test_installed_metadata_carries_the_expression():
    metadata = importlib.metadata.metadata("resnet5m")
    assert metadata["License-Expression"] == "MIT", "an install from before the change: pip install -e . again"
