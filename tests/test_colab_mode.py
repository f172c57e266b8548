"""The notebook's Colab branch in CI: a stand-in `google.colab`, Drive in a temp folder, a disconnect, a resume.

The notebook runs in a Jupyter kernel with tests/colab_standin on its PYTHONPATH, so it takes its Colab branch:
it mounts the stand-in Drive first, finds resnet5m already importable (nothing is pip-installed), and in smoke
mode trains on Drive. The setup cell's fallbacks (a checkout, then the git URL) and its one-message failure
are tested without installing anything.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "resnet5m_cifar10.ipynb"
STANDIN = Path(__file__).resolve().parent / "colab_standin"
FIGURES = ("training_curves", "confusion_matrix", "top_confusions", "per_class", "predictions")

# Injected before the training cell of the first run: the runtime goes away (as when Colab disconnects)
# right after epoch 1's checkpoint has reached Drive.
DISCONNECT = """
import os
from resnet5m.train import Trainer

_save_checkpoint = Trainer.save_checkpoint


def _save_then_disconnect(self):
    _save_checkpoint(self)
    if self.epoch == 1:
        os._exit(1)


Trainer.save_checkpoint = _save_then_disconnect
"""


class CurrentPythonKernel(AsyncKernelManager):
    """A kernel running this very Python, whatever kernels Jupyter has registered elsewhere."""

    @property
    def kernel_spec(self) -> KernelSpec:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name="this Python", language="python")


def execute(nb: nbformat.NotebookNode, cwd: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel, in place, stopping at the first error (as "Run all" does)."""
    cwd.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(nb, timeout=300, kernel_manager_class=CurrentPythonKernel, shutdown_kernel="immediate")
    return client.execute(cwd=str(cwd), env=env)


def colab_env(drive: Path, data: Path, **extra: str) -> dict[str, str]:
    """The kernel's environment: the stand-in google.colab importable, Drive mounted at `drive`, smoke mode."""
    env = {k: v for k, v in os.environ.items() if k != "RESNET5M_WEIGHTS"}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(STANDIN), os.environ.get("PYTHONPATH")])),
        RESNET5M_DRIVE_MOUNT=str(drive),
        RESNET5M_DATA=str(data),
        RESNET5M_SMOKE="1",
        OMP_NUM_THREADS="2",
        **extra,
    )
    return env


def code_text(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell["outputs"] if o["output_type"] == "stream")


def errors(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]


def cell_index(nb: nbformat.NotebookNode, marker: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source)


def setup_sources() -> tuple[str, str]:
    """The source of the setup helpers cell and of the setup cell (the one with the REPO_URL form field)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return nb.cells[cell_index(nb, "def make_importable")].source, nb.cells[cell_index(nb, "#@param")].source


def test_standin_is_not_importable_in_normal_tests() -> None:
    from resnet5m import sources

    assert not sources.in_colab()


def test_colab_mode_trains_on_drive_and_resumes_after_a_disconnect(tmp_path: Path, cifar_dir: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    drive = tmp_path / "drive"
    folder = drive / "MyDrive" / "resnet5m"
    run = folder / "runs" / "notebook-tiny"
    env = colab_env(drive, cifar_dir)
    training = cell_index(nb, "notebook_run_config")

    # The first run goes from the setup and data cells straight to training (as one who skips the plots would)
    # and is cut off there; the second is a plain "Run all".
    first = copy.deepcopy(nb)
    plots, settings = cell_index(nb, "ORIGINAL = plots.ORIGINAL_ACCURACY"), cell_index(nb, "TRAIN = False")
    first.cells = [*nb.cells[:plots], *nb.cells[settings:training], nbformat.v4.new_code_cell(DISCONNECT), *nb.cells[training:]]
    with pytest.raises(DeadKernelError):
        execute(first, tmp_path / "notebooks", env)
    assert not errors(first)
    setup = code_text(first.cells[cell_index(first, "#@param")])
    assert setup.index(f"Mounted at {drive}") < setup.index("resnet5m 0.1.0: already installed")  # Drive first
    assert "installing" not in setup  # step 1: nothing is pip-installed
    assert f"Google Drive: using {folder}" in code_text(first.cells[cell_index(first, "sources.mount_drive(")])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (run / "resnet5m_tiny.pt").exists()  # cut off before the end

    second = copy.deepcopy(nb)
    execute(second, tmp_path / "notebooks", env)
    assert not errors(second)
    assert all((folder / "figures" / f"{name}.png").stat().st_size > 0 for name in FIGURES)
    trained = code_text(second.cells[training])
    assert f"training arch tiny for 2 epochs in {run} (resuming after epoch 1 from checkpoint.pt)" in trained
    assert "epoch   2/2" in trained and "epoch   1/2" not in trained
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    assert (run / "resnet5m_tiny.pt").is_file()
    compared = second.cells[cell_index(second, "training_curves_compared")]
    assert "test accuracy" in code_text(compared)
    assert (folder / "figures" / "training_curves_compared.png").is_file()


def test_setup_stops_with_one_message_when_nothing_installs(tmp_path: Path, cifar_dir: Path) -> None:
    helpers, setup = setup_sources()
    setup = re.sub(r'^REPO_URL = "[^"]*"', 'REPO_URL = "file:///nonexistent/resnet5m"', setup, flags=re.MULTILINE)
    hide = 'import sys\nsys.modules["resnet5m"] = None  # as in a runtime where it is not installed'
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (hide, helpers, setup, 'print("the next cell ran")')]
    # The kernel's folder and its parent hold no checkout; pip may not reach any index.
    env = colab_env(tmp_path / "drive", cifar_dir, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    with pytest.raises(CellExecutionError):
        execute(nb, tmp_path / "work" / "notebooks", env)
    (error,) = errors(nb)
    message = "\n".join(error["traceback"])
    assert error["ename"] == "SetupFailed" and "Traceback" not in message and "File " not in message
    assert message.startswith("Setup stopped: resnet5m could not be made importable. Tried:")
    assert "1. import resnet5m: not installed in this runtime" in message
    assert f"2. a checkout: none in {tmp_path / 'work'}, " in message and "MyDrive/resnet5m/repo" in message
    assert "3. pip install git+file:///nonexistent/resnet5m: fatal: " in message
    assert message.endswith("then run all again.")
    assert code_text(nb.cells[2]).startswith(f"Mounted at {tmp_path / 'drive'}")  # Drive was mounted before
    assert nb.cells[3].execution_count is None and not nb.cells[3].outputs  # "Run all" stopped


@pytest.fixture
def helpers() -> dict:
    """The setup helpers cell, executed in a namespace of its own."""
    namespace: dict = {}
    exec(compile(setup_sources()[0], "setup-helpers", "exec"), namespace)
    return namespace


def checkout(root: Path, package: str) -> Path:
    (root / "src" / package).mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\n")
    return root


def test_setup_installs_a_checkout(
    helpers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = "resnet5m_standin_pkg"
    repo = checkout(tmp_path / "repo", package)
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    targets: list[str] = []

    def install(target: str) -> None:
        targets.append(target)
        (site / package).mkdir(parents=True)  # what pip would leave behind
        (site / package / "__init__.py").write_text('__version__ = "9.9"\n')

    places = [tmp_path / "notebooks", repo, tmp_path / "drive" / "MyDrive" / "resnet5m" / "repo"]
    helpers["make_importable"](package, places, "git+file:///nonexistent", install=install)
    assert targets == [str(repo)]  # the checkout, and the git URL never
    assert f"{package}: installed from {repo}" in capsys.readouterr().out
    del sys.modules[package]  # it was imported from a temp folder that goes away


def test_setup_passes_over_a_plain_clone_that_imports_as_a_namespace(
    helpers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `!git clone ... resnet5m` in Colab's /content: a folder named like the package, without an __init__.py, on the
    # path. It imports as a namespace package (no __file__); setup installs the clone instead of crashing on it.
    package = "resnet5m_standin_clone"
    clone = checkout(tmp_path / package, package)
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tmp_path))  # the working folder holding the clone comes first, as in Jupyter
    targets: list[str] = []

    def install(target: str) -> None:
        targets.append(target)
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text('__version__ = "9.9"\n')

    helpers["make_importable"](package, [tmp_path / "notebooks", tmp_path, clone], "git+file:///nonexistent", install=install)
    assert targets == [str(clone)] and f"{package}: installed from {clone}" in capsys.readouterr().out
    assert sys.modules[package].__file__ == str(site / package / "__init__.py")
    del sys.modules[package]


def test_setup_falls_through_to_the_git_url(helpers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = "resnet5m_standin_missing"
    repo = checkout(tmp_path / "repo", package)
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        commands.append(command)
        out = "  fatal: unable to access 'https://x/': Could not resolve host: x\nERROR: Failed to build 'git+https://x'\n"
        if "git+" not in command[-1]:
            out = "ERROR: Could not find a version that satisfies the requirement setuptools>=64\n"
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=out)

    monkeypatch.setitem(helpers, "subprocess", types.SimpleNamespace(run=run))
    with pytest.raises(helpers["SetupFailed"]) as failed:
        helpers["make_importable"](package, [repo], "git+https://x")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-color"]
    assert commands == [[*pip, str(repo)], [*pip, "git+https://x"]]  # regular installs: never -e
    assert failed.value._render_traceback_() == [
        f"Setup stopped: {package} could not be made importable. Tried:",
        f"  1. import {package}: not installed in this runtime",
        f"  2. pip install {repo}: ERROR: Could not find a version that satisfies the requirement setuptools>=64",
        "  3. pip install git+https://x: fatal: unable to access 'https://x/': Could not resolve host: x",
        "Fix one of them (the network, the REPO_URL field, or a checkout in MyDrive/resnet5m/repo), then run all again.",
    ]
