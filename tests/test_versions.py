"""The versions we claim are the versions we test: one set of floors, a script that tests them, the license we name."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
SCRIPT = ROOT / ".ci" / "versions"


def pyproject_dependencies() -> list[str]:
    """project.dependencies, read as text (tomllib is not in Python 3.10, the oldest we support)."""
    block = re.search(r"^dependencies = \[\n(.*?)^\]", PYPROJECT, re.MULTILINE | re.DOTALL)
    assert block, "pyproject.toml: no dependencies = [ ... ] block"
    return re.findall(r'^\s*"([^"]+)",', block.group(1), re.MULTILINE)


def test_requirements_txt_claims_the_floors_pyproject_claims():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    dependencies = pyproject_dependencies()
    assert requirements == dependencies
    assert all(re.fullmatch(r"[a-z0-9-]+>=[0-9.]+", r) for r in dependencies), dependencies  # floors, no caps


def test_license_file_is_the_mit_license_pyproject_names():
    assert re.search(r'^license = "MIT"$', PYPROJECT, re.MULTILINE)
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the resnet5m authors" in text
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_ci_versions_tests_the_lowest_and_the_newest_versions():
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    # lowest: the oldest Python, read from requires-python in the form the script parses, and the lowest direct deps
    assert re.search(r'^requires-python = ">=3\.10"$', PYPROJECT, re.MULTILINE)
    assert 's/^requires-python = ">=\\([0-9]*\\.[0-9]*\\)".*/\\1/p' in text
    assert re.search(r'setup lowest "\$oldest" lowest-direct', text)
    # newest: Colab's Python, the highest releases
    assert re.search(r"setup newest 3\.12 highest", text)
    assert "--extra dev --extra onnx --extra demo" in text  # the extras .ci/run installs
    assert 'python" -m pytest -q tests' in text and "RESNET5M_SMOKE=1" in text
    assert "versions" not in (ROOT / ".ci" / "run").read_text()  # run by hand: CI stays fast


def test_readme_quick_start_offers_the_cpu_build_first():
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, re.DOTALL).group(1).splitlines()
    cpu = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    (line,) = [i for i, text in enumerate(block) if cpu in text]
    assert block[line].startswith("# optional")  # a comment: a pasted block never replaces a GPU build
    assert line < block.index('pip install -e ".[dev]"')
