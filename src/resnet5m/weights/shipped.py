"""Finding a shipped weights file: the checkout's weights/, else a verified download into torch.hub's cache.

A file counts as the shipped one only when its sha256 is the manifest's, so a Git LFS pointer, a truncated copy
or a retrained file in weights/ is never taken for it. Downloads come from the repository's raw address
(RESNET5M_WEIGHTS_URL overrides it, e.g. for a mirror or a fork) and are checked before they are kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path

import torch

from ..config import weights_name
from ..errors import UserError
from ..files import sha256_of
from ..model import get_config
from .manifest import MANIFEST, Shipped, manifest_entry

# The repository, in this one place; the notebook's badge and install cell repeat it (a test checks they agree).
REPO = "resnet5m/resnet5m"  # placeholder until the repository's real address is known
REPO_URL = f"https://github.com/{REPO}"
URL_ENV = "RESNET5M_WEIGHTS_URL"  # a folder URL serving the weights files, instead of the repository's weights/
WEIGHTS_DIR = Path(__file__).resolve().parents[3] / "weights"  # the repository's weights/ in a source checkout
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is given up


def raw_weights_url(repo_url: str = REPO_URL, branch: str = "main") -> str:
    """The raw address of a repository's weights/ folder (GitHub's /raw/ also serves Git LFS files)."""
    return f"{repo_url}/raw/{branch}/weights"


def weights_url(file: str) -> str:
    """Where a shipped file is downloaded from: $RESNET5M_WEIGHTS_URL/<file>, else the repository's weights/ on main."""
    return f"{(os.environ.get(URL_ENV) or raw_weights_url()).rstrip('/')}/{file}"


def checkout_candidates(file: str, start: str | os.PathLike | None = None) -> list[Path]:
    """Where a checkout keeps weights/<file>: under start (default: cwd), its parent (notebooks/ runs), the package's checkout."""
    start = Path(start) if start is not None else Path.cwd()
    candidates = [start / "weights" / file, start.parent / "weights" / file, WEIGHTS_DIR / file]
    return list(dict.fromkeys(p.resolve() for p in candidates))  # without duplicates, in order


def cache_path(entry: Shipped) -> Path:
    """The file's place in torch.hub's cache, named after its sha256 as torchvision names its downloads."""
    stem, suffix = os.path.splitext(entry.file)
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{stem}-{entry.sha256[:8]}{suffix}"


def download(entry: Shipped, dest: Path, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download entry's file to dest, keeping it only when its sha256 is the manifest's; return dest."""
    url = weights_url(entry.file)
    print(f"downloading {url} to {dest}", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")  # same folder: an atomic rename
    try:
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as e:  # URLError, HTTPError and timeouts are OSErrors, as is a full disk
            raise UserError(
                f"could not download {entry.file} from {url} ({type(e).__name__}: {e}); check the network, "
                f"or ${URL_ENV}, or put the file in a checkout's weights/"
            ) from e
        digest = sha256_of(tmp)
        if digest != entry.sha256:
            raise UserError(
                f"downloaded {entry.file} from {url} has sha256 {digest}, but the manifest expects {entry.sha256}; "
                f"it was not kept. Try again; if it persists, point ${URL_ENV} at a copy of this version's weights/"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the cache is shared like torch.hub's own downloads
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def shipped_file(name: str, *, start: str | os.PathLike | None = None) -> Path:
    """The verified file of the shipped weights `name`: a checkout's copy, else the cached download, else a new download."""
    entry = manifest_entry(name)
    for path in checkout_candidates(entry.file, start):
        if path.is_file():
            if sha256_of(path) == entry.sha256:
                return path
            warnings.warn(f"{path} is not the shipped {entry.file} (its sha256 is not the manifest's); not used", stacklevel=2)
    cached = cache_path(entry)
    if cached.is_file() and sha256_of(cached) == entry.sha256:
        return cached
    return download(entry, cached)  # a damaged cached copy is replaced only by a download that passed the check


def default_weights(arch: str) -> Path:
    """The shipped weights of an arch, for a command run without --weights."""
    get_config(arch)  # an unknown (mistyped) arch is named as such, not as missing weights
    if arch not in MANIFEST:
        names = ", ".join(MANIFEST)
        raise UserError(f"no shipped weights {weights_name(arch)}: the shipped ones are {names}; pass --weights PATH")
    return shipped_file(arch)
