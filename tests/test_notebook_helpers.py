"""The committed notebook: outputs of a real run with the shipped weights, the checked cell current, addresses in step."""

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


def test_committed_outputs_show_the_shipped_weights_on_real_data(cells: list[dict]) -> None:
    from resnet5m.weights import load_weights

    outputs = [o for c in code(cells) for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"]
    text = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
    shipped = load_weights(NOTEBOOK.parents[1] / "weights" / sources.WEIGHTS_NAME)
    metrics = shipped.meta["metrics"]
    # re-execute the notebook (README: jupyter nbconvert --execute) whenever the shipped weights change
    assert f"sha256 {shipped.sha256}" in text
    assert f"{sources.WEIGHTS_NAME} (sha256 verified)" in text  # the shipped file, checked against the manifest
    assert f"test accuracy {100 * metrics['test_acc']:.2f}%" in text and f"on {metrics['test_n']:,} images" in text
    for cell in code(cells):
        if "display(plots." in cell["text"] and "new run" not in cell["text"]:  # the new-run comparison needs TRAIN
            images = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
            assert len(images) == cell["text"].count("display(plots."), cell["text"][:80]


def test_own_images_go_through_resnet5m_load(cells: list[dict]) -> None:
    # The Python entry point, which normalizes inside: the notebook shows the way users are told to take.
    own = next(c for c in code(cells) if "MY_IMAGES =" in c["text"])
    assert "resnet5m.load(choice.path" in own["text"] and ".predict(" in own["text"]


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
    # The package holds the repository address (weights/shipped.py, as sources.REPO_URL); the badge and the setup
    # cell's form field must repeat it exactly.
    assert f"]({sources.COLAB_URL})" in cells[0]["text"]
    assert "colab-badge.svg" in cells[0]["text"]
    setup = next(c["text"] for c in code(cells) if "#@param" in c["text"])
    field = re.search(r'^REPO_URL = "([^"]+)"  #@param \{type:"string"\}$', setup, re.MULTILINE)
    assert field and field.group(1) == sources.REPO_URL
    assert 'f"git+{REPO_URL}"' in setup
    # The setup cell mounts Drive before the package imports, so it repeats the mount point's variable and default.
    assert f'os.environ.get("{sources.DRIVE_MOUNT_ENV}") or "{sources.DRIVE_MOUNT}"' in setup
    assert "mount_drive(mountpoint=DRIVE_MOUNT)" in "".join(c["text"] for c in code(cells))


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


def test_colab_opens_on_a_gpu_runtime() -> None:
    meta = json.loads(NOTEBOOK.read_text())["metadata"]
    assert meta["accelerator"] == "GPU" and meta["colab"]["gpuType"] == "T4"


def test_the_last_cell_gives_the_fast_net_figures_of_the_readme() -> None:
    readme = (NOTEBOOK.parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `fast` (`weights/resnet5m_fast.pt`"))
    seeds = re.search(r"3 seeds: ([\d.]+% ± [\d.]+); validation: ([\d.]+%)", row)
    minutes = re.search(r"(\d+) epochs, at most ([\d.]+ min)", row)
    last = "".join(json.loads(NOTEBOOK.read_text())["cells"][-1]["source"])
    assert seeds and minutes and f"{seeds[1]} on the 1,017 test images (mean of 3 seeds" in last
    assert f"validation {seeds[2]}) in {minutes[1]} epochs, at most {minutes[2]}" in last
