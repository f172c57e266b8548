"""The committed notebook: clean outputs, the one checked cell current, and addresses in step with the package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from resnet5m import sources
from resnet5m.cli import main

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "resnet5m_cifar10.ipynb"
CHECK = "# NBVAL_CHECK_OUTPUT"


@pytest.fixture(scope="module")
def cells() -> list[dict]:
    nb = json.loads(NOTEBOOK.read_text())
    return [{**c, "text": "".join(c["source"])} for c in nb["cells"]]


def code(cells: list[dict]) -> list[dict]:
    return [c for c in cells if c["cell_type"] == "code"]


def test_outputs_cleared_except_the_checked_cell(cells: list[dict]) -> None:
    for cell in code(cells):
        if cell["text"].startswith(CHECK):
            continue
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["text"][:80]


def test_checked_cell_output_is_current(cells: list[dict], capsys: pytest.CaptureFixture[str]) -> None:
    checked = [c for c in code(cells) if c["text"].startswith(CHECK)]
    assert len(checked) == 1
    cell = checked[0]
    assert cell["execution_count"] is not None  # nbval compares only cells with an execution count
    # The .ipynb JSON may store a stream's text as one string or as a list of lines.
    stored = "".join("".join(o["text"]) for o in cell["outputs"] if o["output_type"] == "stream")
    assert main(["info", "--arch", "seed"]) == 0
    assert stored == capsys.readouterr().out
    assert "4,771,146" in stored


def test_addresses_match_the_package(cells: list[dict]) -> None:
    # sources.py holds the repository address; the badge and the install cell must repeat it exactly.
    assert f"]({sources.COLAB_URL})" in cells[0]["text"]
    assert "colab-badge.svg" in cells[0]["text"]
    install = next(c["text"] for c in code(cells) if "pip" in c["text"])
    assert re.search(r'REPO_URL = "([^"]+)"', install).group(1) == sources.REPO_URL
    assert 'f"git+{REPO_URL}"' in install


def test_setup_rules(cells: list[dict]) -> None:
    source = "\n".join(c["text"] for c in code(cells))
    assert "pip install -e" not in source and '"-e"' not in source  # editable installs need a kernel restart in Colab
    assert "google-colab" not in source  # never installed: detected only
    assert 'find_spec("google.colab")' in source
    assert re.search(r"^TRAIN = False\b", source, re.MULTILINE)
    assert "RESNET5M_SMOKE" in source


def test_every_code_cell_has_a_markdown_heading_before_it(cells: list[dict]) -> None:
    seen_markdown = False
    for cell in cells:
        seen_markdown |= cell["cell_type"] == "markdown"
        if cell["cell_type"] == "code":
            assert seen_markdown
    headings = [c["text"].splitlines()[0] for c in cells if c["cell_type"] == "markdown" and c["text"].startswith("## ")]
    for section in ("Setup", "Google Drive", "Trained weights", "CIFAR-10", "Evaluate", "Plots", "Train"):
        assert any(section in h for h in headings), section
