"""torch.hub entry points (hubconf.py) and the shipped-weights download: verified, refused when corrupt, cached.

The download runs against a local HTTP server on 127.0.0.1 serving a copy of weights/, for a checkout without
weights/ (hubconf.py and src/ copied), in a fresh Python so that this checkout's package and files are not used.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import resnet5m
from resnet5m.classifier import Classifier
from resnet5m.errors import UserError
from resnet5m.weights import MANIFEST, URL_ENV, Shipped, shipped
from resnet5m.weights.shipped import cache_path

ROOT = Path(__file__).resolve().parents[1]
SERVER_TIMEOUT = 30  # seconds a test may wait on the local server before it fails
HUB_LOAD = """
import sys
import torch

model = torch.hub.load(sys.argv[1], "fast", source="local")
again = torch.hub.load(sys.argv[1], "fast", source="local")  # from torch.hub's cache, not downloaded twice
print(type(model).__name__, model.arch, model.training, torch.equal(model.net.linear.weight, again.net.linear.weight))
print(sys.modules["resnet5m"].__file__)
"""


class Served(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, records each request path, and keeps the test output quiet."""

    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the signature of the base method
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """(served folder, its URL, the request paths) of a server bound to 127.0.0.1 only, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []
    handler = type("Handler", (Served,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    httpd.timeout = SERVER_TIMEOUT
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_port}/", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(SERVER_TIMEOUT)


def hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_entries_are_the_shipped_nets():
    module = hubconf()
    entries = sorted(name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_"))
    assert entries == sorted(MANIFEST)  # what torch.hub.list shows: no helper is taken for an entry
    assert module.dependencies == ["torch", "torchvision"]


def test_hub_load_local_gives_the_classifier_that_load_gives():
    model = torch.hub.load(str(ROOT), "fast", source="local")
    assert isinstance(model, Classifier) and not model.training and model.arch == "fast"
    direct = resnet5m.load("fast")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values(), strict=True))
    untrained = torch.hub.load(str(ROOT), "fast", source="local", pretrained=False)
    assert not torch.equal(untrained.net.linear.weight, model.net.linear.weight)


def test_a_checkout_without_weights_downloads_verifies_and_refuses(tmp_path: Path, server):
    served, url, requests = server
    checkout = tmp_path / "checkout"  # a fresh clone whose weights/ are not there (e.g. a Git LFS checkout without lfs)
    shutil.copytree(ROOT / "src", checkout / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "hubconf.py", checkout)
    entry = MANIFEST["fast"]
    good = (ROOT / "weights" / entry.file).read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (served / entry.file).write_bytes(bytes(corrupt))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({URL_ENV: url, "TORCH_HOME": str(tmp_path / "torch")})
    cache = tmp_path / "torch" / "hub" / "checkpoints"

    def hub_load() -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", HUB_LOAD, str(checkout)]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)

    refused = hub_load()
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert f"downloaded {entry.file} from {url}{entry.file}" in message
    assert hashlib.sha256(corrupt).hexdigest() in message and entry.sha256 in message and "was not kept" in message
    assert URL_ENV in message  # the fix: where to point the download
    assert not cache.exists() or list(cache.iterdir()) == []  # neither the bad file nor a partial one stays

    (served / entry.file).write_bytes(good)
    done = hub_load()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Classifier fast False True"
    assert Path(lines[1]).is_relative_to(checkout)  # the checkout's own package, as torch.hub runs it
    assert [p.name for p in cache.iterdir()] == [f"resnet5m_fast-{entry.sha256[:8]}.pt"]
    assert requests == [f"/{entry.file}", f"/{entry.file}"]  # the refused try and one good download, then the cache


@pytest.fixture
def tiny_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server) -> tuple[Shipped, Path]:
    """A small shipped file of its own in the manifest, served, with torch.hub's cache and the cwd in tmp_path."""
    served, url, _ = server
    data = b"a small weights file"
    (served / "small.pt").write_bytes(data)
    entry = Shipped("small", "small.pt", hashlib.sha256(data).hexdigest(), len(data), 0, "tiny", 0.0, 0.0, 0)
    monkeypatch.setitem(MANIFEST, "small", entry)
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    return entry, served


def test_a_damaged_cached_copy_is_replaced_by_a_verified_download(tiny_entry):
    entry, _ = tiny_entry
    path = shipped.shipped_file("small")
    assert path == cache_path(entry) and path.read_bytes() == b"a small weights file"
    path.write_bytes(b"damaged")
    assert shipped.shipped_file("small").read_bytes() == b"a small weights file"


def test_a_copy_in_weights_that_is_not_the_shipped_one_is_not_used(tiny_entry, tmp_path: Path):
    entry, _ = tiny_entry
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "small.pt").write_bytes(b"retrained")
    with pytest.warns(UserWarning, match="is not the shipped small.pt"):
        assert shipped.shipped_file("small") == cache_path(entry)
    (tmp_path / "weights" / "small.pt").write_bytes(b"a small weights file")
    assert shipped.shipped_file("small") == (tmp_path / "weights" / "small.pt").resolve()


def test_a_failed_download_is_one_line_with_the_fix(tiny_entry):
    _, served = tiny_entry
    (served / "small.pt").unlink()
    with pytest.raises(UserError, match=rf"could not download small.pt from .*small.pt \(HTTPError: HTTP Error 404.*\${URL_ENV}"):
        shipped.shipped_file("small")
