"""The README stays in step with the code: every command in its bash blocks parses, its Python block runs as written."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image

from resnet5m.cli import build_parser
from resnet5m.demo import EXAMPLES_DIR
from resnet5m.weights import REPO

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines(text: str) -> list[str]:
    """Every command of the ```bash blocks, continuation lines joined and comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]  # whole-line comments too


def cli_args(line: str) -> list[str] | None:
    """The arguments after `resnet5m` (direct, or `torchrun ... -m resnet5m`), else None."""
    words = shlex.split(line)
    if words[0] == "resnet5m":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1] == "resnet5m":
        return words[words.index("-m") + 2 :]
    return None


def test_quick_start_is_install_evaluate_test_on_the_first_screen():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = bash_lines(quick)
    assert lines[0] == 'pip install -e ".[dev]"' and lines[1] == "resnet5m evaluate"
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[2] in ci.splitlines()  # the test command, exactly as CI runs it
    assert README.index("## Quick start") < 4000  # within the first screen or so of text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^dev = \[", pyproject, re.MULTILINE)


@pytest.mark.parametrize("line", [line for line in bash_lines(README) if cli_args(line) is not None])
def test_every_readme_command_parses(line):
    args = build_parser().parse_args(cli_args(line))  # argparse exits (SystemExit) on a stale flag
    assert callable(args.func)


def test_the_python_block_runs_as_written(tmp_path, monkeypatch):
    section = README.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    block, hub = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(block.strip().splitlines()) == 3  # import, load, predict
    assert README.index("## Use it from Python") < README.index("## Quick start")  # near the top
    # the two files it names: test images of the demo's examples, one of them as a JPEG
    shutil.copy(EXAMPLES_DIR / "cat_test0.png", tmp_path / "cat.png")
    Image.open(EXAMPLES_DIR / "dog_test16.png").convert("RGB").save(tmp_path / "dog.jpg", quality=90)
    monkeypatch.chdir(tmp_path)  # no weights/ here: load() finds the checkout's shipped file
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    model, classes, probs = namespace["model"], namespace["classes"], namespace["probs"]
    assert [model.classes[i] for i in classes] == ["cat", "dog"] and probs.shape == (2, 10)
    assert hub.strip().startswith(f'model = torch.hub.load("{REPO}", "best")')
