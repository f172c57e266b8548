"""Weights resolution falls through its sources with one-line messages and never overwrites a file."""

from __future__ import annotations

import hashlib
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from resnet5m import sources
from resnet5m.errors import UserError
from resnet5m.weights import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
GOOD = b"published weights"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
QUOTA = (
    "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently. Please try "
    "accessing the file again later.\n\nYou may still be able to access the file from the browser"
)


class ConnectionError(OSError):  # noqa: A001 - named like requests.exceptions.ConnectionError on purpose
    """Stands in for requests' ConnectionError, which describe_error recognizes by name."""


def fake_gdown(monkeypatch: pytest.MonkeyPatch, behaviour) -> list[dict]:
    """Install a fake gdown module whose download() runs behaviour(output); return the recorded calls."""
    calls: list[dict] = []

    def download(**kwargs):
        calls.append(kwargs)
        return behaviour(Path(kwargs["output"]))

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    return calls


def writes(data: bytes):
    def behaviour(output: Path) -> str:
        assert not output.exists()  # gdown always gets a fresh path, never a user's file
        output.write_bytes(data)
        return str(output)

    return behaviour


def raises(error: Exception):
    def behaviour(output: Path) -> str:
        raise error

    return behaviour


def resolve(tmp_path: Path, **kwargs) -> sources.WeightsChoice:
    """resolve_weights with every location inside tmp_path unless given."""
    kwargs.setdefault("drive_dir", None)
    kwargs.setdefault("gdrive_id", None)
    kwargs.setdefault("expected_sha256", None)
    kwargs.setdefault("repo_weights", tmp_path / "repo" / "weights" / sources.WEIGHTS_NAME)
    kwargs.setdefault("download_dir", tmp_path / "cache")
    return sources.resolve_weights(**kwargs)


def messages(choice: sources.WeightsChoice) -> dict[str, str]:
    return {a.source: a.message for a in choice.attempts}


@pytest.fixture
def repo_file(tmp_path: Path) -> Path:
    path = tmp_path / "repo" / "weights" / sources.WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(GOOD)
    return path


def test_drive_file_found(tmp_path: Path, repo_file: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / sources.WEIGHTS_NAME).write_bytes(GOOD)
    choice = resolve(tmp_path, drive_dir=drive, expected_sha256=GOOD_SHA)
    assert tuple(choice) == (drive / sources.WEIGHTS_NAME, "drive", GOOD_SHA)
    assert [a.source for a in choice.attempts] == ["drive"]
    assert "sha256 verified" in choice.report()


def test_override_comes_first(tmp_path: Path, repo_file: Path) -> None:
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"my own run")
    choice = resolve(tmp_path, override=mine, expected_sha256=GOOD_SHA)
    assert choice.source == "override" and choice.path == mine  # the user's file is not held to the manifest's sha256
    missing = resolve(tmp_path, override=tmp_path / "nope.pt")
    assert missing.source == "repo" and "does not exist" in messages(missing)["override"]


def test_drive_sha_mismatch_refused(tmp_path: Path, repo_file: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / sources.WEIGHTS_NAME).write_bytes(b"something else")
    choice = resolve(tmp_path, drive_dir=drive, expected_sha256=GOOD_SHA)
    assert choice.source == "repo" and choice.sha256 == GOOD_SHA
    assert "refused" in messages(choice)["drive"]
    assert (drive / sources.WEIGHTS_NAME).read_bytes() == b"something else"  # left alone


def test_unreachable_drive(tmp_path: Path, repo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drive = tmp_path / "drive"
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if drive in self.parents:
            raise OSError(107, "Transport endpoint is not connected")
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    choice = resolve(tmp_path, drive_dir=drive)
    assert choice.source == "repo"
    assert "not reachable" in messages(choice)["drive"] and "Transport endpoint" in messages(choice)["drive"]


def test_no_ids_skips_gdrive_with_message(tmp_path: Path, repo_file: Path) -> None:
    choice = resolve(tmp_path)
    assert choice.source == "repo" and choice.path == repo_file
    assert "no published Google Drive file id" in messages(choice)["gdrive"]
    assert "not mounted" in messages(choice)["drive"]


def test_gdown_downloads_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_gdown(monkeypatch, writes(GOOD))
    choice = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert choice.source == "gdrive" and choice.sha256 == GOOD_SHA
    assert choice.path == tmp_path / "cache" / sources.WEIGHTS_NAME and choice.path.read_bytes() == GOOD
    assert set(calls[0]) == {"id", "output", "quiet"}  # arguments gdown 5.x and 6.x both accept
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [sources.WEIGHTS_NAME]  # no temp files left


def test_gdown_6_gets_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def download(id=None, output=None, quiet=False, timeout=None):  # the 6.x signature, trimmed
        calls.append({"id": id, "timeout": timeout})
        Path(output).write_bytes(GOOD)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    choice = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert choice.source == "gdrive" and calls == [{"id": "FILEID", "timeout": 60.0}]


def test_gdown_into_drive_folder_is_found_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    fake_gdown(monkeypatch, writes(GOOD))
    first = resolve(tmp_path, drive_dir=drive, download_dir=None, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert first.source == "gdrive" and first.path == drive / sources.WEIGHTS_NAME
    fake_gdown(monkeypatch, raises(AssertionError("must not download again")))
    again = resolve(tmp_path, drive_dir=drive, download_dir=None, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert again.source == "drive"


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (raises(Exception(QUOTA)), "quota exceeded"),
        (raises(ConnectionError("Max retries exceeded with url")), "no network"),
        (raises(RuntimeError("HTTP 500")), "RuntimeError: HTTP 500"),
        (lambda output: None, "could not download"),  # older gdown returns None instead of raising
        (writes(b"tampered"), "refused"),
    ],
)
def test_gdown_failures_fall_through(
    tmp_path: Path, repo_file: Path, monkeypatch: pytest.MonkeyPatch, behaviour, expected: str
) -> None:
    fake_gdown(monkeypatch, behaviour)
    choice = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert choice.source == "repo" and choice.path == repo_file
    message = messages(choice)["gdrive"]
    assert expected in message and "\n" not in message
    assert not (tmp_path / "cache" / sources.WEIGHTS_NAME).exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temp download was cleaned up


def test_gdown_not_installed(tmp_path: Path, repo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gdown", None)  # makes `import gdown` raise ImportError
    choice = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert choice.source == "repo"
    assert "gdown is not installed" in messages(choice)["gdrive"]


def test_download_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sources.WEIGHTS_NAME).write_bytes(b"the user's own file")
    fake_gdown(monkeypatch, writes(GOOD))
    choice = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)
    assert (cache / sources.WEIGHTS_NAME).read_bytes() == b"the user's own file"
    assert choice.path == cache / f"resnet5m_seed.{GOOD_SHA[:12]}.pt" and choice.path.read_bytes() == GOOD
    again = resolve(tmp_path, gdrive_id="FILEID", expected_sha256=GOOD_SHA)  # the same bytes reuse that name
    assert again.path == choice.path and len(list(cache.iterdir())) == 2


def test_publish_existing_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(GOOD)
    tmp = tmp_path / "tmp.pt"
    tmp.write_bytes(GOOD)
    assert sources.publish(tmp, tmp_path, "w.pt", GOOD_SHA) == tmp_path / "w.pt"
    assert not tmp.exists()


def test_repo_sha_mismatch_refused(tmp_path: Path, repo_file: Path) -> None:
    choice = resolve(tmp_path, expected_sha256="0" * 64)
    assert not choice.found and "refused" in messages(choice)["repo"]


def test_repo_download_when_not_in_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls: list[str] = []

    def url_fetch(url: str, timeout: float = 60.0):
        urls.append(url)
        return writes(GOOD)

    monkeypatch.setattr(sources, "url_fetch", url_fetch)
    choice = resolve(tmp_path, repo_url="https://github.com/o/r", expected_sha256=GOOD_SHA)
    assert choice.source == "repo" and choice.path == tmp_path / "cache" / sources.WEIGHTS_NAME
    assert urls == ["https://github.com/o/r/raw/main/weights/resnet5m_seed.pt"]


def test_repo_download_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    choice = resolve(tmp_path, repo_url="https://github.com/o/r")
    assert not choice.found and messages(choice)["repo"].startswith("no network (URLError")


def test_validate_rejects_and_falls_through(tmp_path: Path, repo_file: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / sources.WEIGHTS_NAME).write_bytes(b"truncated")

    def validate(path: Path) -> None:
        if path.read_bytes() != GOOD:
            raise UserError(f"{path} is not a PyTorch checkpoint or is truncated")

    choice = resolve(tmp_path, drive_dir=drive, validate=validate)
    assert choice.source == "repo" and "truncated" in messages(choice)["drive"]


def test_nothing_found(tmp_path: Path) -> None:
    choice = resolve(tmp_path)
    assert not choice.found and tuple(choice) == (None, None, None)
    assert [a.source for a in choice.attempts] == ["drive", "gdrive", "repo"]
    assert not any(a.ok for a in choice.attempts)
    assert "none found" in choice.report() and sources.WEIGHTS_ENV in choice.report()


def test_describe_error_is_one_line() -> None:
    import urllib.error

    assert "quota exceeded" in sources.describe_error(Exception(QUOTA))
    not_found = urllib.error.HTTPError("https://github.com/o/r/raw/main/w.pt", 404, "Not Found", {}, None)
    assert sources.describe_error(not_found) == "HTTPError: HTTP Error 404: Not Found"  # reached the server: not "no network"
    assert sources.describe_error(ValueError()) == "ValueError"
    assert "\n" not in sources.describe_error(RuntimeError("a\nb" * 200))


def test_in_colab_false_here() -> None:
    assert sources.in_colab() is False


def test_mount_drive_outside_colab(capsys: pytest.CaptureFixture[str]) -> None:
    assert sources.mount_drive(colab=False) is None
    assert "skipped (not running in Colab)" in capsys.readouterr().out


def fake_colab(monkeypatch: pytest.MonkeyPatch, mount) -> None:
    drive = types.SimpleNamespace(mount=mount)
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)


def test_mount_drive_in_colab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounted: list[str] = []
    fake_colab(monkeypatch, mounted.append)
    path = sources.mount_drive(mountpoint=str(tmp_path / "drive"), colab=True)
    assert mounted == [str(tmp_path / "drive")]
    assert path == tmp_path / "drive" / sources.DRIVE_FOLDER and path.is_dir()


def test_mount_drive_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(mountpoint: str) -> None:
        raise ValueError("mount failed: credential propagation was unsuccessful")

    fake_colab(monkeypatch, refuse)
    assert sources.mount_drive(mountpoint=str(tmp_path / "drive"), colab=True) is None
    assert "not mounted (ValueError: mount failed" in capsys.readouterr().out


def test_choose_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESNET5M_DATA", str(tmp_path))
    assert sources.choose_data_dir(colab=True) == (tmp_path, False)
    monkeypatch.delenv("RESNET5M_DATA")
    assert sources.choose_data_dir(colab=True) == (Path(sources.COLAB_DATA), True)
    assert sources.choose_data_dir(colab=False) == (Path("data"), True)


def test_run_dir(tmp_path: Path) -> None:
    assert sources.run_dir(tmp_path) == tmp_path / "runs" / "notebook-seed"
    assert sources.run_dir(None, "tiny") == Path("runs") / "notebook-tiny"


def test_notebook_train_config(tmp_path: Path) -> None:
    recipe = {"arch": "seed", "epochs": 26, "progressive": "16:10,24:6", "lr": 0.3, "out": "elsewhere", "unknown": 1,
              "precision": "fp16"}  # fmt: skip
    cfg = sources.notebook_train_config(recipe, tmp_path / "run", "/data")
    assert cfg.precision == "auto"  # the runtime's card decides, not the card the recipe was trained on
    assert (cfg.arch, cfg.epochs, cfg.progressive, cfg.lr) == ("seed", 26, "16:10,24:6", 0.3)
    assert cfg.out == str(tmp_path / "run") and cfg.data_dir == "/data" and not cfg.resume and not cfg.test
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    assert sources.notebook_train_config(None, tmp_path / "run", None).resume  # a disconnected runtime resumes
    smoke = sources.notebook_train_config(recipe, tmp_path / "smoke", None, smoke=True)
    assert (smoke.arch, smoke.epochs, smoke.subset, smoke.progressive) == ("tiny", 1, 256, "")


def test_drive_mountpoint_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.DRIVE_MOUNT_ENV, raising=False)
    assert sources.drive_mountpoint() == "/content/drive"
    monkeypatch.setenv(sources.DRIVE_MOUNT_ENV, str(tmp_path / "drive"))
    mounted: list[str] = []
    fake_colab(monkeypatch, mounted.append)
    assert sources.mount_drive(colab=True) == tmp_path / "drive" / sources.DRIVE_FOLDER
    assert mounted == [str(tmp_path / "drive")]


def test_mount_drive_already_mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The setup cell mounted Drive already: no second mount call, so no second authorization pop-up.
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    mounted: list[str] = []
    fake_colab(monkeypatch, mounted.append)
    assert sources.mount_drive(mountpoint=str(tmp_path / "drive"), colab=True) == tmp_path / "drive" / sources.DRIVE_FOLDER
    assert mounted == []


def test_notebook_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = {"arch": "seed", "epochs": 26}
    local = sources.notebook_run_config(recipe, None, "/data")
    assert (local.out, local.epochs) == (str(Path("runs") / "notebook-seed"), 26)
    smoke = sources.notebook_run_config(recipe, None, "/data", smoke=True)
    assert Path(smoke.out).name.startswith("resnet5m-smoke-") and smoke.epochs == 1 and not smoke.resume
    drive = tmp_path / "drive"
    on_drive = sources.notebook_run_config(recipe, drive, "/data", smoke=True)
    assert on_drive.out == str(drive / "runs" / "notebook-tiny") and on_drive.arch == "tiny"
    assert on_drive.epochs == sources.SMOKE_DRIVE_EPOCHS == 2 and not on_drive.resume
    assert sources.notebook_run_config(recipe, drive, "/data").out == str(drive / "runs" / "notebook-seed")


def test_notebook_run_config_own_spec(tmp_path: Path) -> None:
    # The training cell's ARCH: the shipped recipe on the user's own shape, in a run folder named for it.
    recipe = {"arch": "seed", "epochs": 26, "lr": 0.2}
    cfg = sources.notebook_run_config(recipe, tmp_path, "/data", arch="resnet:4,4,3@64,128,256")
    assert (cfg.arch, cfg.epochs, cfg.lr) == ("resnet:4,4,3@64,128,256", 26, 0.2)
    assert Path(cfg.out).parent == tmp_path / "runs" and "@" not in Path(cfg.out).name and ":" not in Path(cfg.out).name
    with pytest.raises(UserError, match="resnet:"):
        sources.notebook_run_config(recipe, tmp_path, "/data", arch="resnet:5,4@64")


def test_run_note_says_where_it_resumes(tmp_path: Path) -> None:
    import torch

    cfg = sources.notebook_run_config(None, tmp_path, None, smoke=True)
    assert sources.run_note(cfg) == f"training arch tiny for 2 epochs in {cfg.out}"
    assert sources.checkpoint_epoch(cfg.out) is None
    Path(cfg.out).mkdir(parents=True)
    torch.save({"epoch": 1}, Path(cfg.out) / "checkpoint.pt")
    resumed = sources.notebook_run_config(None, tmp_path, None, smoke=True)
    assert resumed.resume and sources.run_note(resumed).endswith("(resuming after epoch 1 from checkpoint.pt)")
    (Path(cfg.out) / "checkpoint.pt").write_bytes(b"half-synced")
    assert sources.run_note(resumed).endswith("(resuming from checkpoint.pt)")  # training reports what is wrong
    torch.save({"epoch": 2}, Path(cfg.out) / "checkpoint.pt")
    assert sources.run_note(resumed) == f"arch tiny: the run in {cfg.out} already finished (2 epochs); its weights are loaded"
    assert sources.run_note(replace(cfg, epochs=1, resume=False)) == f"training arch tiny for 1 epoch in {cfg.out}"


def test_the_notebook_can_pick_other_shipped_weights(tmp_path: Path) -> None:
    # The notebook's WEIGHTS variable: each shipped net's file is looked for by its own name, checked against its sha256.
    for arch, entry in MANIFEST.items():
        assert sources.published(arch) == (sources.GDRIVE_ID if arch == "seed" else None, entry.sha256)
    assert sources.published("tiny") == (None, None)  # not shipped: nothing to check a file against
    name = sources.weights_name("fast")
    _, sha = sources.published("fast")
    lookup = {"name": name, "expected_sha256": sha, "repo_weights": tmp_path / "repo" / "weights" / name}
    missing = resolve(tmp_path, **lookup)
    assert not missing.found and f"put {name} in the Drive folder" in missing.report()
    drive = tmp_path / "drive"
    drive.mkdir(exist_ok=True)
    shutil.copy(ROOT / "weights" / name, drive / name)
    found = resolve(tmp_path, drive_dir=drive, **lookup)
    assert (found.path, found.source, found.sha256) == (drive / name, "drive", sha)
    assert "sha256 verified" in messages(found)["drive"]
    (drive / name).write_bytes(GOOD)  # another file under the fast net's name
    refused = resolve(tmp_path, drive_dir=drive, **lookup)
    assert not refused.found and f"expected {sha[:16]}" in messages(refused)["drive"]
