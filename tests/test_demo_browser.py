"""`resnet5m demo` served by the real command and driven in a real headless Chromium (Playwright).

Needs the [dev] extra (gradio, playwright) and a chromium binary: Debian's `chromium` package (.ci/run installs it
when it can), or $RESNET5M_CHROMIUM. Playwright's own browser download is not used. The page must render with
every request off this machine refused: no CDN, fonts or analytics. Screenshots of a prediction and of the message
for a bad file go to $RESNET5M_SCREENSHOTS when set (e.g. to look at them, or to refresh docs/demo.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SHARED
from PIL import Image

from resnet5m.data import CLASSES, load_split

pytest.importorskip("gradio", reason='the demo needs Gradio: pip install -e ".[demo]"')
sync_api = pytest.importorskip("playwright.sync_api", reason='the browser test needs Playwright: pip install -e ".[dev]"')

CHROMIUM = os.environ.get("RESNET5M_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
TEST_INDEX = 2  # a ship in the test split that the shipped seed weights classify correctly (92%)
START_S = 120  # importing torch and Gradio and opening the weights on a busy 2-core machine
ANSWER_MS = 30_000

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium found: apt-get install chromium, or set RESNET5M_CHROMIUM"),
    pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(), reason="../shared/cifar10 not present"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`resnet5m demo` on a free port, run from an empty folder as a user would run it; its URL."""
    port, folder = free_port(), tmp_path_factory.mktemp("demo")
    log = open(folder / "server.log", "w+")
    command = [sys.executable, "-m", "resnet5m", "demo", "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                log.seek(0)
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"resnet5m demo did not come up on {url}:\n{log.read()}")
                time.sleep(0.5)
        yield url
        assert process.poll() is None, "the server stopped"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_page_classifies_an_upload_explains_a_bad_file_and_keeps_serving(server: str, tmp_path: Path):
    shots = Path(os.environ.get("RESNET5M_SCREENSHOTS") or tmp_path)
    images, labels = load_split("test", SHARED, download_missing=False)
    expected = CLASSES[labels[TEST_INDEX]]
    Image.fromarray(images[TEST_INDEX].permute(1, 2, 0).numpy()).save(tmp_path / "upload.png")
    (tmp_path / "notes.png").write_text("a text file with an image's name\n")
    outside = []

    def local_only(route: sync_api.Route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run its sandbox as root, as CI runs
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", local_only)
            page.goto(server)
            message, top = page.locator("#message"), page.locator('#top [data-testid="label-output-value"]')
            sync_api.expect(message).to_contain_text("Upload, paste or take a picture", timeout=ANSWER_MS)
            upload = page.locator("input[type=file]")

            upload.set_input_files(tmp_path / "upload.png")
            sync_api.expect(top).to_have_text(expected, timeout=ANSWER_MS)
            sync_api.expect(message).to_contain_text(f"{expected} (")
            assert page.locator("img[src*='/gradio_api/file=']").count() >= 3  # the upload, the 32x32 view, Grad-CAM
            page.screenshot(path=shots / "demo.png", full_page=True)

            upload.set_input_files(tmp_path / "notes.png")
            sync_api.expect(message).to_contain_text("Cannot classify this file: this file is not an image", timeout=ANSWER_MS)
            sync_api.expect(top).to_have_count(0)  # the last prediction is cleared, not left standing
            page.screenshot(path=shots / "demo_bad_file.png", full_page=True)

            page.locator("img[src*='frog_test7']").click()  # a bundled example: the server still answers
            sync_api.expect(top).to_have_text("frog", timeout=ANSWER_MS)
        finally:
            browser.close()
    assert outside == [], "the page asked for resources off this machine"
    assert all((shots / name).stat().st_size > 10_000 for name in ("demo.png", "demo_bad_file.png"))
