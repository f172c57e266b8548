"""Files written safely: a sha256, a staged write that never leaves half a file, torch.save through it.

Every file the package writes (weights, training checkpoints and histories, exports, figures, CSVs, sweep results)
is built in memory and written by `write_bytes` or `write_text` through `staged`, so a crash, a full disk or a
folder that cannot be written leaves any previous file as it was and says so in one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, exhausted quota, file too large for the file system
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temp path next to `path`, renamed onto it only when the block succeeds: a crash never leaves half a file.

    A full disk or a folder that cannot be written is one UserError naming the path and the free space;
    the previous file at `path`, if any, is left as it was.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; weights are meant to be shared
        os.replace(tmp, path)
    except (OSError, UserError) as e:
        # A UserError caused by an OSError comes from a nested staged write (export writes through save_weights
        # into its own temp file): re-described here, it names the file the user asked for, not a temp name.
        cause = e if isinstance(e, OSError) else e.__cause__
        if isinstance(cause, OSError) and (cause.errno in _NO_SPACE or cause.errno in _NOT_WRITABLE):
            raise UserError(_write_failure(path, cause)) from cause
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _write_failure(path: Path, e: OSError) -> str:
    """One line for a write that failed for lack of space or permission: where, how much room is left, what to do."""
    folder = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), Path.cwd())  # the nearest existing one
    try:
        room = shutil.disk_usage(folder).free
        free = f"{room / 1e9:.2f} GB free in {folder}" if room >= 1e9 else f"{room / 1e6:.2f} MB free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    advice = "free some space or choose another --out" if e.errno in _NO_SPACE else "choose another --out you can write to"
    return f"could not write {path}: {os.strerror(e.errno)} ({free}); {advice}; an existing {path.name} is left unchanged"


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes | memoryview | io.BytesIO) -> None:
    """data (bytes, or a whole BytesIO written without a copy) as the file at path, through staged(): all or
    nothing, a full disk or a read-only folder in one line."""
    if isinstance(data, io.BytesIO):
        # The view is released here even when the write fails: a failed write's traceback kept it alive, and on
        # Python 3.12.1 the garbage collector then crashed the process when it freed the BytesIO before the view.
        with data.getbuffer() as view:
            write_bytes(path, view)  # a memoryview writes like bytes
        return
    with staged(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """text (UTF-8) as the file at path, through write_bytes."""
    write_bytes(path, text.encode())


def atomic_save(obj: Any, path: str | os.PathLike, overwrite: bool = True) -> None:
    """torch.save through a staged temp file; refuse an existing path unless overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another path or remove it first")
    # Into memory first: on a full disk torch's zip writer raises RuntimeError("unexpected pos ...") from its exit
    # and hides the OSError(ENOSPC) that staged() explains. The archive's inner folder is then always "archive".
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer)
