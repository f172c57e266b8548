"""Saving and safely loading model weights.

Our format is a plain dict (loadable with weights_only=True) holding the state dict and its
metadata. The loader also takes a bare state dict in the original project's key format and a
DataParallel/DDP (`module.`-prefixed) one, and refuses anything else with one clear line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .model import (
    ARCHS,
    ArchConfig,
    arch_name,
    build_model,
    config_from_dict,
    count_params,
    get_config,
    infer_config,
)

FORMAT = "resnet5m-weights"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
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
        free = f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    advice = "free some space or choose another --out" if e.errno in _NO_SPACE else "choose another --out you can write to"
    return f"could not write {path}: {os.strerror(e.errno)} ({free}); {advice}; an existing {path.name} is left unchanged"


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike, overwrite: bool = True) -> None:
    """torch.save through a staged temp file; refuse an existing path unless overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another path or remove it first")
    # Through a Python file object, so a full disk raises OSError(ENOSPC), which staged() explains, rather than
    # the RuntimeError of torch's own file writer; the archive's inner folder is then always "archive", not the temp name.
    with staged(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_weights(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str | None = None,
    *,
    metrics: dict | None = None,
    recipe: dict | None = None,
    history: list | None = None,
    extra: dict | None = None,
    half: bool = False,
    overwrite: bool = False,
) -> str:
    """Save weights with metadata in our format; return the file's sha256."""
    config: ArchConfig = model.config
    state = {k: v.detach().cpu() for k, v in unwrap_state_dict(model.state_dict()).items()}
    if half:  # storage only: the loader casts back to fp32
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch or arch_name(config),
        "config": config.to_dict(),
        "params": count_params(model),
        "state_dict": state,
        "metrics": metrics or {},
        "recipe": recipe or {},
        "history": history or [],
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_save(payload, path, overwrite=overwrite)
    return sha256_of(path)


def unwrap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a `module.` / `_orig_mod.` prefix shared by every key."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _torch_load(path: Path, device: torch.device | str) -> Any:
    # torch warns about what it reads (e.g. "Detected pickle protocol 4 ... the weights_only Unpickler might not
    # support ...") just before it fails on it; the warnings are kept back so that a failure is our one line, which
    # names the protocol when that is the reason. A file that loads needs no such notice.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e) and "GLOBAL" in str(e):
                raise UserError(
                    f"{path} holds a pickled Python object (e.g. a whole model saved with torch.save(model)), "
                    "which is not loaded for safety; re-save it with torch.save(model.state_dict(), path)"
                ) from e
            protocol = next((m[1] for w in caught if (m := re.search(r"pickle protocol (\d+)", str(w.message)))), None)
            if protocol:
                raise UserError(
                    f"{path} was pickled with protocol {protocol} (pickle.dump, or torch.save with pickle_protocol), which "
                    "the safe loader does not read; re-save it with torch.save(model.state_dict(), path)"
                ) from e
            raise UserError(f"{path} is not a PyTorch checkpoint or is truncated; download or copy it again") from e
        except Exception as e:  # the unpickler fails on junk bytes with KeyError, EOFError, RuntimeError, ...
            raise UserError(f"{path} is not a PyTorch checkpoint or is truncated; download or copy it again") from e


def _split_payload(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Separate the state dict from metadata for each accepted layout."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return obj["state_dict"], meta
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a training checkpoint of ours
        return obj["model"], {"arch": obj["arch"]} if "arch" in obj else {}
    raise UserError(f"{path} holds no model state dict; pass a weights file saved by resnet5m or torch.save(model.state_dict())")


def _fitting_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The named arch whose parameter names and shapes are exactly those of state, if one is."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, config in ARCHS.items():
        with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
            expected = config.build().state_dict()
        if shapes == {k: tuple(v.shape) for k, v in expected.items()}:
            return name
    return None


def _lookalike(state: dict[str, torch.Tensor], arch: str, recorded: str | None) -> str:
    """What the weights are, for a mismatch message, and the --arch that loads them."""
    if recorded in ARCHS and recorded != arch:
        return f"the file records arch '{recorded}': pass --arch {recorded} or drop --arch"
    config = infer_config(state)
    shape = f" (blocks {list(config.blocks)}, widths {list(config.widths)})" if config is not None else ""
    name = _fitting_arch(state) or (arch_name(config) if config is not None else None)
    if name and name != arch:
        return f"it looks like arch '{name}'{shape}: pass --arch {name} or drop --arch"
    if config is not None:
        return f"it looks like a ResNet{shape}: drop --arch to load it"
    return "it is not a resnet5m/original-format ResNet"


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path, recorded: str | None) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        if mismatched:
            parts.append(f"shape mismatch at {mismatched[:3]}")
        raise UserError(f"{path} does not fit arch '{arch}': {'; '.join(parts)}; {_lookalike(state, arch, recorded)}")


@dataclass
class LoadedWeights:
    """A model with its weights loaded, plus what the file said about itself."""

    model: nn.Module
    arch: str
    sha256: str
    meta: dict = field(default_factory=dict)


def read_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", expected_sha256: str | None = None
) -> tuple[Any, str]:
    """The object a .pt file holds (torch.load with weights_only=True) and the file's sha256, checked when expected."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found; pass --weights PATH to an existing .pt file")
    digest = sha256_of(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise UserError(f"{path} has sha256 {digest}, expected {expected_sha256}; the file is corrupt or not the one published")
    return _torch_load(path, device), digest


def weights_from(
    obj: Any, path: str | os.PathLike, sha256: str, arch: str | None = None, device: torch.device | str = "cpu"
) -> LoadedWeights:
    """Build the model a loaded checkpoint object describes (any accepted layout) and load its weights."""
    path = Path(path)
    state, meta = _split_payload(obj, path)
    state = unwrap_state_dict(state)
    if arch is None:
        if "config" in meta:
            config = config_from_dict(meta["config"])
        elif meta.get("arch") in ARCHS:
            config = get_config(meta["arch"])
        else:
            config = infer_config(state)
        if config is None:
            raise UserError(f"{path}: cannot tell the architecture from its keys; pass --arch NAME")
        arch = meta.get("arch") or arch_name(config) or "custom"
    else:
        config = get_config(arch)
    model = build_model(config, allow_over_limit=True)
    _check_keys(model, state, arch, path, meta.get("arch"))
    # fp16-stored weights go back to fp32; integer buffers (num_batches_tracked) keep their dtype.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return LoadedWeights(model.to(device), arch, sha256, meta)


def load_weights(
    path: str | os.PathLike,
    arch: str | None = None,
    device: torch.device | str = "cpu",
    expected_sha256: str | None = None,
) -> LoadedWeights:
    """Load a weights file safely (weights_only=True), checking its sha256 when one is expected."""
    obj, digest = read_checkpoint(path, device, expected_sha256)
    return weights_from(obj, path, digest, arch, device)
