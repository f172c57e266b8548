"""The shipped weights, by name: file, sha256, size, parameters, test figure and recipe (manifest.json).

This is the one record of what ships in the repository's weights/: downloads are checked against its sha256
(shipped.py, the notebook's sources), and the README's figures and the files themselves are tested against
it. `entry_for` writes an entry from a file's own content; `resnet5m publish` prints the one of the file it
writes, to be pasted into manifest.json when that file ships.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from .layout import FORMAT
from .read import read_checkpoint

MANIFEST_FILE = Path(__file__).with_name("manifest.json")


@dataclass(frozen=True)
class Shipped:
    """One shipped weights file and what it was measured to do."""

    name: str  # what resnet5m.load, torch.hub and --arch call it
    file: str  # its name in weights/
    sha256: str
    bytes: int
    params: int
    recipe: str  # the preset recipe it was trained with (resnet5m train --arch RECIPE)
    test_acc: float  # with the recipe's test-time views, as `resnet5m evaluate` runs it
    test_acc_one_view: float | None  # without test-time views, as the Classifier's forward runs it (None: not measured)
    test_n: int  # test images the figures were measured on

    def to_dict(self) -> dict:
        """The entry as manifest.json holds it (without the name, which is its key)."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


def entry_for(path: str | os.PathLike, name: str | None = None) -> Shipped:
    """The manifest entry of a published weights file (one `resnet5m publish` wrote), read from the file itself."""
    path = Path(path)
    obj, digest = read_checkpoint(path)
    metrics = obj.get("metrics", {}) if isinstance(obj, dict) and obj.get("format") == FORMAT else {}
    if "test_acc" not in metrics or "test_n" not in metrics:
        raise UserError(f"{path} records no test figure; publish it first: resnet5m publish --weights {path} --out OUT")
    return Shipped(
        name=name or obj["arch"],
        file=path.name,
        sha256=digest,
        bytes=path.stat().st_size,
        params=obj["params"],
        recipe=obj.get("recipe", {}).get("arch", obj["arch"]),
        test_acc=metrics["test_acc"],
        test_acc_one_view=metrics.get("test_acc_no_tta", None if metrics.get("test_tta") else metrics["test_acc"]),
        test_n=metrics["test_n"],
    )


def _read(path: Path = MANIFEST_FILE) -> dict[str, Shipped]:
    return {name: Shipped(name=name, **entry) for name, entry in json.loads(path.read_text()).items()}


MANIFEST: dict[str, Shipped] = _read()


def manifest_entry(name: str) -> Shipped:
    """The shipped weights called name (seed, fast, best); a UserError naming the choices for any other name."""
    if name not in MANIFEST:
        raise UserError(f"no shipped weights called '{name}'; the shipped ones are {', '.join(MANIFEST)}")
    return MANIFEST[name]
