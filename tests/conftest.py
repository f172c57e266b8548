"""Shared fixtures: CIFAR-10 batch files generated in the real pickle layout (resnet5m.synthetic)."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest

from resnet5m.synthetic import make_batch, write_cifar

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"
__all__ = ["SHARED", "make_batch", "write_cifar"]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated CIFAR-10 copy: 1,000 training and 200 test images."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


class _FillingFile:
    """A real file on a disk that fills up: what fits is written, then the write fails as a full disk's does."""

    def __init__(self, file, room: list[int], code: int) -> None:
        self.file, self.room, self.code = file, room, code

    def write(self, data) -> int:
        # Released on the way out, also when the write fails: a view left alive in a traceback crashed Python 3.12.1's
        # garbage collector (see files.write_bytes).
        with memoryview(data).cast("B") as view:
            if len(view) > self.room[0]:
                self.file.write(view[: self.room[0]])
                self.room[0] = 0
                raise OSError(self.code, os.strerror(self.code))
            self.room[0] -= len(view)
            return self.file.write(view)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


@pytest.fixture
def disk_fills_after(monkeypatch: pytest.MonkeyPatch):
    """disk_fills_after(n[, errno]): from now on, files that resnet5m opens for writing fail after n more bytes in all."""
    import resnet5m.files

    def fill(n: int, code: int = errno.ENOSPC) -> None:
        room = [n]

        def filling_open(path, mode="r", *args, **kwargs):
            file = builtins.open(path, mode, *args, **kwargs)
            return _FillingFile(file, room, code) if any(c in mode for c in "wax+") else file

        monkeypatch.setattr(resnet5m.files, "open", filling_open, raising=False)

    return fill
