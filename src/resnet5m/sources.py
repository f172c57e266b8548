"""Where the notebook's inputs come from: Colab and Drive, the trained weights, CIFAR-10, a run folder.

Every lookup here degrades to a one-line message and the next option instead of an exception,
because the notebook must run top to bottom on Colab, locally and in CI, with or without a
network, a mounted Drive or a published weights file.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from .config import TrainConfig, weights_name
from .data import ENV_VAR as DATA_ENV
from .errors import UserError
from .files import sha256_of
from .model import get_config, safe_name
from .runfolder import CHECKPOINT
from .text import plural
from .weights import MANIFEST, REPO, REPO_URL, checkout_candidates, raw_weights_url

COLAB_URL = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/resnet5m_cifar10.ipynb"

# The seed net's weights on Google Drive: a file id (None until published there); its sha256 is the manifest's.
GDRIVE_ID: str | None = None
WEIGHTS_NAME = weights_name("seed")
WEIGHTS_ENV = "RESNET5M_WEIGHTS"  # a weights file to use before any other source (local runs, tests)

DRIVE_MOUNT = "/content/drive"
DRIVE_MOUNT_ENV = "RESNET5M_DRIVE_MOUNT"  # another mount point; CI points it at a temp folder
DRIVE_FOLDER = "MyDrive/resnet5m"
COLAB_DATA = "/content/data"
# A smoke run on Drive trains this many epochs, so that a run cut off after the first has one left to resume.
SMOKE_DRIVE_EPOCHS = 2
CACHE_DIR = Path.home() / ".cache" / "resnet5m"
QUOTA_TEXT = "Too many users have viewed or downloaded this file recently"
# Exception class names (anywhere in the MRO) that mean "no network", from urllib, socket and requests.
_NETWORK_ERRORS = {"URLError", "gaierror", "ConnectionError", "Timeout", "TimeoutError", "ConnectTimeout", "ReadTimeout"}


# --- Colab and Drive ------------------------------------------------------------------------------
def in_colab() -> bool:
    """True inside a Google Colab runtime; never imports or installs anything."""
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all, or a broken namespace package
        return False


def drive_mountpoint() -> str:
    """Where Google Drive is mounted: $RESNET5M_DRIVE_MOUNT, else /content/drive."""
    return os.environ.get(DRIVE_MOUNT_ENV) or DRIVE_MOUNT


def mount_drive(folder: str = DRIVE_FOLDER, mountpoint: str | None = None, colab: bool | None = None) -> Path | None:
    """In Colab, mount Google Drive (browser pop-up authorization) and return mountpoint/folder, created if needed.

    mountpoint defaults to drive_mountpoint(). A Drive already mounted there (by the notebook's setup cell)
    is used without mounting again. Outside Colab, or when mounting fails, print one line and return None.
    """
    if not (in_colab() if colab is None else colab):
        print("Google Drive: skipped (not running in Colab); weights and checkpoints stay on this machine")
        return None
    mountpoint = mountpoint or drive_mountpoint()
    try:
        if not (Path(mountpoint) / "MyDrive").is_dir():
            from google.colab import drive

            drive.mount(mountpoint)
        path = Path(mountpoint) / folder
        path.mkdir(parents=True, exist_ok=True)
    except Exception as e:  # a refused pop-up, a timeout or a Drive hiccup must not stop the notebook
        print(f"Google Drive: not mounted ({describe_error(e)}); continuing without it")
        return None
    print(f"Google Drive: using {path}")
    return path


# --- weights --------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One source tried while looking for the weights, and what happened."""

    source: str
    ok: bool
    message: str


@dataclass
class WeightsChoice:
    """The weights file found (path, source, sha256 all None when none was) and every attempt on the way."""

    path: Path | None
    source: str | None
    sha256: str | None
    attempts: list[Attempt] = field(default_factory=list)
    name: str = WEIGHTS_NAME  # the file looked for

    @property
    def found(self) -> bool:
        return self.path is not None

    def __iter__(self) -> Iterator[Path | str | None]:
        # Unpacks as (path, source, sha256), the shape callers most often want.
        return iter((self.path, self.source, self.sha256))

    def report(self) -> str:
        """One line per attempt, then the outcome."""
        lines = [f"  {'ok  ' if a.ok else 'skip'} {a.source:8s} {a.message}" for a in self.attempts]
        if self.found:
            lines.append(f"weights: {self.path} (source: {self.source}, sha256 {self.sha256})")
        else:
            lines.append(
                "weights: none found; the evaluation and plot cells will be skipped "
                f"(set {WEIGHTS_ENV}=PATH, put {self.name} in the Drive folder, or train below)"
            )
        return "\n".join(lines)


class SourceFailed(Exception):
    """A weights source did not deliver; the message is the one line shown to the user."""


def describe_error(e: BaseException) -> str:
    """A one-line, user-facing description of a download or file-system failure."""
    text = " ".join(str(e).split())  # gdown and requests put newlines and whole HTML snippets in messages
    if QUOTA_TEXT.lower() in text.lower():
        return f"Google Drive download quota exceeded ('{QUOTA_TEXT}'); try again in a few hours"
    names = {cls.__name__ for cls in type(e).__mro__}
    if names & _NETWORK_ERRORS and "HTTPError" not in names:  # an HTTP error status means the network worked
        return f"no network ({type(e).__name__}: {text[:120]})"
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def check_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256; raise SourceFailed when an expected one is given and differs."""
    digest = sha256_of(path)
    if expected and digest != expected.lower():
        raise SourceFailed(f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}...; refused")
    return digest


def claim_name(tmp: Path, dest: Path) -> bool:
    """Move tmp to dest only when no file is there yet; True when moved. An existing file is never replaced."""
    try:
        # O_EXCL reserves the name atomically, so a file appearing meanwhile is not clobbered either.
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    os.replace(tmp, dest)
    return True


def publish(tmp: Path, folder: Path, name: str, digest: str) -> Path:
    """Give a verified download its final name in folder without overwriting anything; return the path.

    name when free; an existing name holding the same bytes is reused; otherwise stem.<sha12>.suffix.
    """
    stem, suffix = os.path.splitext(name)
    for candidate in (folder / name, folder / f"{stem}.{digest[:12]}{suffix}"):
        if claim_name(tmp, candidate):
            return candidate
        if candidate.is_file() and sha256_of(candidate) == digest:
            tmp.unlink(missing_ok=True)
            return candidate
    raise SourceFailed(f"{folder} already holds different files named {name} and {stem}.{digest[:12]}{suffix}; not overwritten")


def download_verified(fetch: Callable[[Path], None], folder: Path, name: str, expected_sha256: str | None) -> tuple[Path, str]:
    """Run fetch(tmp_path) into a fresh temp folder beside the target, verify, publish; return (path, sha256)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=folder, prefix=".download-"))
    except OSError as e:
        raise SourceFailed(f"cannot write to {folder} ({describe_error(e)})") from e
    tmp = tmp_dir / name  # a path that does not exist yet: gdown 5.x and 6.x both write it as given
    try:
        try:
            fetch(tmp)
        except SourceFailed:
            raise
        except Exception as e:  # network, quota and HTTP errors come in many types; each becomes one line
            raise SourceFailed(describe_error(e)) from e
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise SourceFailed("the download produced no file")
        digest = check_sha256(tmp, expected_sha256)
        return publish(tmp, folder, name, digest), digest
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def gdown_fetch(gdrive_id: str, timeout: float = 60.0) -> Callable[[Path], None]:
    """A fetch function downloading a Google Drive file with gdown (imported only when used)."""

    def fetch(tmp: Path) -> None:
        try:
            import gdown
        except ImportError as e:
            raise SourceFailed("gdown is not installed (pip install gdown)") from e
        # Only arguments that gdown 5.x and 6.x share: 6.x dropped md5/postprocess, so we verify ourselves.
        kwargs: dict = {"id": gdrive_id, "output": str(tmp), "quiet": True}
        if "timeout" in inspect.signature(gdown.download).parameters:  # 6.x: a stalled connection must not hang the notebook
            kwargs["timeout"] = timeout
        result = gdown.download(**kwargs)
        if result is None:  # older gdown reports some failures by returning None
            raise SourceFailed("gdown could not download the file (permission or quota); try again later")

    return fetch


def url_fetch(url: str, timeout: float = 60.0) -> Callable[[Path], None]:
    """A fetch function downloading a URL with the standard library."""

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)

    return fetch


def repo_weights_url(repo_url: str = REPO_URL, name: str = WEIGHTS_NAME, branch: str = "main") -> str:
    """The download address of weights/<name> in the repository."""
    return f"{raw_weights_url(repo_url, branch)}/{name}"


def _try_override(path: Path) -> tuple[Path, str]:
    if not path.is_file():
        raise SourceFailed(f"{path} (from {WEIGHTS_ENV} or the override argument) does not exist")
    return path, sha256_of(path)  # the user's own choice: reported, not checked against the manifest's sha256


def _try_drive(drive_dir: Path | None, name: str, expected: str | None) -> tuple[Path, str]:
    if drive_dir is None:
        raise SourceFailed("no Drive folder (Drive not mounted)")
    try:
        path = drive_dir / name
        if not path.is_file():
            raise SourceFailed(f"no {name} in {drive_dir}")
        return path, check_sha256(path, expected)
    except OSError as e:  # a Drive mount that went away answers with OSError on any access
        raise SourceFailed(f"{drive_dir} is not reachable ({describe_error(e)})") from e


def _try_gdrive(gdrive_id: str | None, expected: str | None, folder: Path, name: str) -> tuple[Path, str]:
    if not gdrive_id:
        raise SourceFailed("no published Google Drive file id yet (sources.GDRIVE_ID)")
    if not expected:  # a download that could not be verified is not attempted
        raise SourceFailed(f"no sha256 in the manifest of shipped weights for {name}, so no download to check")
    return download_verified(gdown_fetch(gdrive_id), folder, name, expected)


def _try_repo(candidates: list[Path], repo_url: str | None, expected: str | None, folder: Path, name: str) -> tuple[Path, str]:
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return found, check_sha256(found, expected)
    if repo_url is None:
        places = ", ".join(str(p.parent) for p in candidates)
        raise SourceFailed(f"no {name} in {places} (the trained weights are not in this checkout yet)")
    return download_verified(url_fetch(repo_weights_url(repo_url, name)), folder, name, expected)


def _sha_note(source: str, expected_sha256: str | None) -> str:
    if source == "override":
        return "chosen explicitly; sha256 not checked"
    return "sha256 verified" if expected_sha256 else "sha256 not checked: not in the manifest of shipped weights"


def resolve_weights(
    drive_dir: str | os.PathLike | None,
    gdrive_id: str | None = GDRIVE_ID,
    expected_sha256: str | None = None,
    repo_weights: str | os.PathLike | None = None,
    *,
    override: str | os.PathLike | None = None,
    repo_url: str | None = None,
    download_dir: str | os.PathLike | None = None,
    name: str = WEIGHTS_NAME,
    validate: Callable[[Path], object] | None = None,
) -> WeightsChoice:
    """Find the trained weights; try each source in turn and never raise.

    Order: override (e.g. $RESNET5M_WEIGHTS); <drive_dir>/<name>; the Google Drive file gdrive_id via gdown;
    the repository's weights/<name> (repo_weights on disk, else downloaded from repo_url when given).
    Every file but the override is checked against expected_sha256 (published(arch) gives the manifest's);
    downloads land in download_dir (default: drive_dir, else ~/.cache/resnet5m). validate(path), e.g. a trial
    load, may raise UserError to reject a file.
    """
    drive = Path(drive_dir) if drive_dir is not None else None
    folder = Path(download_dir) if download_dir is not None else drive or CACHE_DIR
    repo = [Path(repo_weights)] if repo_weights is not None else checkout_candidates(name)
    sources: list[tuple[str, Callable[[], tuple[Path, str]]]] = []
    if override:
        sources.append(("override", lambda: _try_override(Path(override))))
    sources += [
        ("drive", lambda: _try_drive(drive, name, expected_sha256)),
        ("gdrive", lambda: _try_gdrive(gdrive_id, expected_sha256, folder, name)),
        ("repo", lambda: _try_repo(repo, repo_url, expected_sha256, folder, name)),
    ]
    attempts: list[Attempt] = []
    for source, attempt in sources:
        try:
            path, digest = attempt()
            if validate is not None:
                validate(path)
        except (SourceFailed, UserError) as e:
            attempts.append(Attempt(source, False, str(e)))
            continue
        attempts.append(Attempt(source, True, f"{path} ({_sha_note(source, expected_sha256)})"))
        return WeightsChoice(path, source, digest, attempts, name)
    return WeightsChoice(None, None, None, attempts, name)


def published(arch: str) -> tuple[str | None, str | None]:
    """(Google Drive file id, sha256) of an arch's shipped weights, the sha256 from the manifest; (None, None) if not shipped."""
    entry = MANIFEST.get(arch)
    if entry is None:
        return None, None
    return (GDRIVE_ID if entry.file == WEIGHTS_NAME else None), entry.sha256


# --- data and training ----------------------------------------------------------------------------
def choose_data_dir(colab: bool | None = None) -> tuple[Path, bool]:
    """(CIFAR-10 folder, whether to download when missing): $RESNET5M_DATA, else /content/data in Colab, else ./data."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser(), False  # a prepared copy: a missing file is an error to show
    if in_colab() if colab is None else colab:
        return Path(COLAB_DATA), True
    return Path("data"), True


def run_dir(drive_dir: str | os.PathLike | None, arch: str = "seed", local_root: str | os.PathLike = "runs") -> Path:
    """The training run folder: on Drive when mounted, so a disconnected Colab runtime can resume; else local."""
    root = Path(drive_dir) / "runs" if drive_dir is not None else Path(local_root)
    return root / f"notebook-{arch}"


def notebook_train_config(
    recipe: dict | None, out: str | os.PathLike, data_dir: str | os.PathLike | None, smoke: bool = False
) -> TrainConfig:
    """A TrainConfig for the notebook's training cell.

    The recipe stored in the shipped weights file (when there is one) is reused so that the new run
    is comparable with it. resume is set when `out` already holds a checkpoint. smoke: one short
    epoch of the tiny arch on 256 images, for CI.
    """
    known = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in (recipe or {}).items() if k in known}
    if smoke:
        kwargs.update(arch="tiny", epochs=1, subset=256, val_size=256, batch_size=64, progressive="", tta=False)
    kwargs["precision"] = "auto"  # the card decides (runtime.resolve_precision): a recipe from one GPU type runs on another
    out = Path(out)
    kwargs.update(
        out=str(out),
        data_dir=str(data_dir) if data_dir is not None else None,
        resume=(out / CHECKPOINT).is_file(),
        device="auto",
        download=True,
        quiet=smoke,
        test=False,
    )
    return TrainConfig(**kwargs)


def run_weights_path(cfg: TrainConfig) -> Path:
    """The final weights file that `train(cfg)` writes into its run folder."""
    return Path(cfg.out) / weights_name(cfg.arch)


def notebook_run_config(
    recipe: dict | None,
    drive_dir: str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
    smoke: bool = False,
    arch: str = "",
) -> TrainConfig:
    """The notebook's training run: notebook_train_config in run_dir(drive_dir), resumed when a checkpoint is there.

    arch: a name or spec (e.g. resnet:4,4,3@64,128,256) trained with the recipe instead of the recipe's own arch;
    a bad spec is a UserError. smoke (tiny, whatever arch) without Drive trains in a fresh temp folder; smoke on
    Drive (Colab) trains SMOKE_DRIVE_EPOCHS epochs in the Drive run folder, so that running the notebook again
    after a disconnect resumes it.
    """
    if arch:
        get_config(arch)  # a typo in the spec stops here, in one line, not after the data is loaded
        recipe = {**(recipe or {}), "arch": arch}
    if smoke and drive_dir is None:
        out = Path(tempfile.mkdtemp(prefix="resnet5m-smoke-"))
    else:
        out = run_dir(drive_dir, "tiny" if smoke else safe_name((recipe or {}).get("arch", "seed")))
    cfg = notebook_train_config(recipe, out, data_dir, smoke=smoke)
    return replace(cfg, epochs=SMOKE_DRIVE_EPOCHS) if smoke and drive_dir is not None else cfg


def checkpoint_epoch(out: str | os.PathLike) -> int | None:
    """Epochs completed by the checkpoint in run folder `out`, or None when there is none (or it is unreadable)."""
    try:
        state = torch.load(Path(out) / CHECKPOINT, map_location="cpu", weights_only=True)
        return int(state["epoch"])
    except Exception:  # missing, half-synced or foreign: training itself reports the details
        return None


def run_note(cfg: TrainConfig) -> str:
    """One line for the training cell: what trains where, and from which epoch it resumes."""
    done = checkpoint_epoch(cfg.out) if cfg.resume else None
    if done is not None and done >= cfg.epochs:
        return f"arch {cfg.arch}: the run in {cfg.out} already finished ({plural(done, 'epoch')}); its weights are loaded"
    note = f"training arch {cfg.arch} for {plural(cfg.epochs, 'epoch')} in {cfg.out}"
    if cfg.resume:
        note += f" (resuming after epoch {done} from {CHECKPOINT})" if done is not None else f" (resuming from {CHECKPOINT})"
    return note
