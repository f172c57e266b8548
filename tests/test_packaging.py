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


def test_the_wheel_carries_the_package_data(tmp_path):
    # Colab installs a regular (non-editable) wheel: the demo's examples, the measured sweeps and the manifest of the
    # shipped weights must be in it.
    import shutil
    import subprocess
    import sys
    import zipfile

    # built from a copy, so that setuptools' build/ folder is not left in the checkout
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    build = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("resnet5m-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    data = sorted(src.glob("resnet5m/demo_examples/*.png")) + sorted(src.glob("resnet5m/results/*.csv"))
    data.append(src / "resnet5m" / "weights" / "manifest.json")
    assert data and {p.relative_to(src).as_posix() for p in data} <= names
