"""The README's commands stay in step with the CLI: every command in its bash blocks parses as written."""

import re
import shlex
from pathlib import Path

import pytest

from resnet5m.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines(text: str) -> list[str]:
    """Every command of the ```bash blocks, continuation lines joined and comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


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
