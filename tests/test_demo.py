"""The demo's classify step (demo.py) on good and bad uploads, its weights on offer, and the page it builds.

No browser here: tests/test_demo_browser.py drives the served page in a real one.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_checkpoint import randomized

from resnet5m import demo as dm
from resnet5m import export as ex
from resnet5m.cli import main
from resnet5m.data import CLASSES
from resnet5m.errors import UserError
from resnet5m.gradcam import overlay
from resnet5m.inputs import read_inputs
from resnet5m.model import build_model
from resnet5m.predict import predict_with
from resnet5m.weights import save_weights

EXAMPLES = sorted(dm.EXAMPLES_DIR.glob("*.png"))


@pytest.fixture(scope="module")
def shipped() -> dm.Demo:
    """The demo as `resnet5m demo` starts it: the shipped weights, the seed net selected."""
    return dm.Demo(*dm.weight_choices())


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny net, and beside it as hot.pt the same net with a stored temperature of 2."""
    torch.manual_seed(0)
    folder, model = tmp_path_factory.mktemp("weights"), randomized(build_model("tiny"))
    save_weights(folder / "hot.pt", model, "tiny", extra={"temperature": 2.0})
    save_weights(folder / "tiny.pt", model, "tiny")
    return folder / "tiny.pt"


def test_examples_are_one_test_image_per_class():
    assert sorted(p.name.split("_")[0] for p in EXAMPLES) == sorted(CLASSES)
    assert all(Image.open(p).size == (32, 32) for p in EXAMPLES)


def test_a_good_image_gives_the_top_5_the_input_and_grad_cam(shipped: dm.Demo):
    path = dm.EXAMPLES_DIR / "ship_test18.png"
    top, seen, cam, message = shipped.classify(str(path), "seed")
    assert list(top)[0] == "ship" and len(top) == dm.TOP_K and 0.5 < top["ship"] <= 1
    assert list(top.values()) == sorted(top.values(), reverse=True)
    assert message.startswith("**ship** (") and "`seed` weights with flip TTA" in message and "not calibrated" in message
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert seen.shape == (256, 256, 3) and (seen[::8, ::8] == pixels).all()  # the 32x32 input, each pixel 8x8
    assert cam.shape == (256, 256, 3) and cam.dtype == np.uint8 and not (cam == seen).all()


def test_every_example_is_classified_as_its_class_by_both_shipped_nets(shipped: dm.Demo):
    inputs = read_inputs([str(dm.EXAMPLES_DIR)])
    truth = [CLASSES.index(name.split("_")[0]) for name in inputs.ids]
    for label in ("seed", "fast"):
        assert predict_with(*shipped.model(label), inputs).predicted.tolist() == truth, label


def test_grayscale_and_transparent_images_are_converted_with_a_note(shipped: dm.Demo, tmp_path: Path):
    Image.new("L", (64, 48), 90).save(tmp_path / "gray.png")
    top, seen, _, message = shipped.classify(tmp_path / "gray.png", "seed")
    assert len(top) == 5 and "grayscale image (L): converted to RGB" in message and "resized from 64x48" in message
    assert (seen == 90).all()
    Image.fromarray(np.full((32, 32), 90 * 257, np.uint16)).save(tmp_path / "deep.png")  # 16-bit: was shown all white
    top, seen, _, message = shipped.classify(tmp_path / "deep.png", "seed")
    assert "deep grayscale image (I;16): scaled to 8 bits" in message and (seen == 90).all()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[:, 16:, 3] = 255, 255  # red; the left half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    top, seen, _, message = shipped.classify(tmp_path / "rgba.png", "seed")
    assert len(top) == 5 and "transparent pixels shown over white" in message and "resized" not in message
    assert (seen[:, :100] == 255).all() and (seen[:, 150:] == [255, 0, 0]).all()


@pytest.mark.parametrize("content", [b"this is text, not a PNG\n", b"", b"\x89PNG\r\n\x1a\n truncated"])
def test_a_non_image_gives_a_message(shipped: dm.Demo, tmp_path: Path, content: bytes):
    (tmp_path / "notes.png").write_bytes(content)
    top, seen, cam, message = shipped.classify(tmp_path / "notes.png", "seed")
    assert (top, seen, cam) == (None, None, None)
    assert message.startswith("**Cannot classify this file:** this file is not an image")


def test_a_huge_image_is_refused_before_it_is_decoded(shipped: dm.Demo, tmp_path: Path, monkeypatch):
    Image.new("1", (8000, 8000)).save(tmp_path / "huge.png")  # 64 megapixels in a small file
    monkeypatch.setattr(dm, "read_image", lambda path: pytest.fail("decoded"))
    top, _, _, message = shipped.classify(tmp_path / "huge.png", "seed")
    assert top is None and "too large: 8000x8000 pixels, over the limit of 50 megapixels" in message


def test_nothing_uploaded_asks_for_an_image(shipped: dm.Demo):
    assert shipped.classify(None, "seed") == (None, None, None, dm.PROMPT)


def test_weights_on_offer_are_the_shipped_files_that_exist_and_a_given_one_first(tiny_weights: Path):
    choices, default = dm.weight_choices()
    assert default == "seed" and list(choices) == ["seed", "fast", "best"]
    assert all(path.is_file() for path in choices.values())
    choices, default = dm.weight_choices(tiny_weights)
    assert default == str(tiny_weights) and list(choices) == [str(tiny_weights), "seed", "fast", "best"]
    assert dm.weight_choices(arch="fast")[1] == "fast"
    shipped_seed = dm.weight_choices()[0]["seed"]
    assert list(dm.weight_choices(shipped_seed)[0]) == [str(shipped_seed), "fast", "best"]  # not offered twice
    with pytest.raises(UserError, match="no shipped weights resnet5m_tiny.pt"):
        dm.weight_choices(arch="tiny")


def test_each_weights_file_is_opened_once(tiny_weights: Path, monkeypatch):
    opened = []
    real = dm.open_weights
    monkeypatch.setattr(dm, "open_weights", lambda *args: opened.append(args[0]) or real(*args))
    demo = dm.Demo(*dm.weight_choices(tiny_weights), arch="tiny")
    for _ in range(2):
        demo.classify(EXAMPLES[0], str(tiny_weights))
    assert opened == [tiny_weights] and demo.model(str(tiny_weights)) is demo.model(str(tiny_weights))
    assert demo.classify(EXAMPLES[0], "no such weights")[3].startswith("**Cannot use these weights:** unknown weights")


def test_a_stored_temperature_calibrates_the_probabilities(tiny_weights: Path):
    demo = dm.Demo({"plain": tiny_weights, "hot": tiny_weights.with_name("hot.pt")}, "plain")
    (plain, *_, plain_message), (hot, *_, hot_message) = (demo.classify(EXAMPLES[0], label) for label in ("plain", "hot"))
    assert "not calibrated" in plain_message and "calibrated at the temperature 2.000 stored in the weights" in hot_message
    assert list(hot) == list(plain) and max(hot.values()) < max(plain.values())  # the same order, less sure


def test_graph_exports_are_classified_without_grad_cam(tiny_weights: Path, tmp_path: Path):
    script = tmp_path / "tiny.torchscript.pt"
    ex.export(tiny_weights, "torchscript", script)
    top, seen, cam, message = dm.Demo({"ts": script}, "ts").classify(EXAMPLES[0], "ts")
    assert len(top) == 5 and seen is not None and cam is None
    assert "no Grad-CAM: Grad-CAM needs an eager resnet5m network" in message


def test_overlay_blends_jet_over_enlarged_pixels():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    out = overlay(image, np.ones((2, 2), np.float32), scale=3)
    assert out.shape == (6, 6, 3) and (out == out[0, 0]).all()
    assert tuple(out[0, 0]) == (64, 0, 0)  # half of jet's dark red (0.5, 0, 0) over black


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == 'resnet5m: error: the demo needs Gradio: pip install -e ".[demo]"\n'


def test_bad_weights_and_a_taken_port_are_one_line_errors(tmp_path: Path, capsys):
    pytest.importorskip("gradio")
    (tmp_path / "bad.pt").write_text("not weights")
    assert main(["demo", "--weights", str(tmp_path / "bad.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"resnet5m: error: {tmp_path / 'bad.pt'} is not a PyTorch checkpoint")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    assert (
        capsys.readouterr().err
        == f"resnet5m: error: cannot serve on 127.0.0.1:{port} (in use, or not allowed); choose another --port\n"
    )


def test_the_command_tells_of_its_own_share_flag(monkeypatch, capsys):
    gr = pytest.importorskip("gradio")
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda app: app.close())  # Ctrl-C at once
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["demo", "--port", str(port), "--arch", "fast"]) == 0
    out = capsys.readouterr().out  # then the closing server's line
    assert out.startswith(f"* Running on local URL:  http://127.0.0.1:{port}\n* To create a public link, pass --share.\n")
    assert "launch()" not in out


def test_launch_inline_serves_the_page_in_the_background(capsys):
    pytest.importorskip("gradio")
    app = dm.launch_inline(arch="fast")
    try:
        with urllib.request.urlopen(app.local_url, timeout=30) as page:
            assert page.status == 200 and "resnet5m demo" in page.read().decode()
        assert app.share is False  # no public link unless asked for, in Colab too
        out = capsys.readouterr().out
        assert "* To create a public link, call launch_inline(share=True)." in out and "launch()" not in out
    finally:
        app.close()


def test_two_requests_at_once_take_turns_at_the_network(shipped: dm.Demo, monkeypatch):
    inside, most = [0], [0]
    real = dm.predict_with

    def predict_with(*args):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)  # long enough for the other request to reach the network, were it let in
        inside[0] -= 1
        return real(*args)

    monkeypatch.setattr(dm, "predict_with", predict_with)
    paths = [dm.EXAMPLES_DIR / "ship_test18.png", dm.EXAMPLES_DIR / "cat_test0.png"]
    with ThreadPoolExecutor(2) as pool:
        tops = list(pool.map(lambda path: shipped.classify(path, "seed")[0], paths))
    assert most == [1] and [list(top)[0] for top in tops] == ["ship", "cat"]


def test_a_slow_upload_does_not_hold_up_another(shipped: dm.Demo, monkeypatch):
    slow, other_done = dm.EXAMPLES_DIR / "ship_test18.png", threading.Event()
    real = dm.read_upload
    waited = []

    def read_upload(path: Path):
        if path == slow:  # still decoding until the other request has its answer (or 30 s have passed)
            waited.append(other_done.wait(30))
        return real(path)

    monkeypatch.setattr(dm, "read_upload", read_upload)
    with ThreadPoolExecutor(2) as pool:
        slow_top = pool.submit(shipped.classify, slow, "seed")
        time.sleep(0.1)  # the slow one is reading its file
        assert list(shipped.classify(dm.EXAMPLES_DIR / "cat_test0.png", "seed")[0])[0] == "cat"
        other_done.set()
        assert list(slow_top.result()[0])[0] == "ship"
    assert waited == [True]


def test_the_page_offers_the_weights_and_the_examples(shipped: dm.Demo):
    gr = pytest.importorskip("gradio")
    app = dm.build_app(shipped)
    assert isinstance(app, gr.Blocks) and app.analytics_enabled is False
    blocks = list(app.blocks.values())
    dropdown = next(b for b in blocks if isinstance(b, gr.Dropdown))
    assert [c[0] for c in dropdown.choices] == ["seed", "fast", "best"] and dropdown.value == "seed"
    image = next(b for b in blocks if isinstance(b, gr.Image) and b.interactive is not False)
    assert set(image.sources) == {"upload", "clipboard", "webcam"}
    (classify,) = (fn for fn in app.fns.values() if len(fn.outputs) == 4)  # top-5, the two views, the message
    assert classify.preprocess is False  # the demo, not gr.Image, opens the uploaded file
    examples = next(b for b in blocks if isinstance(b, gr.Dataset))
    assert len(examples.samples) == len(CLASSES)


def test_the_page_serves_two_requests_at_once_and_bounds_the_queue(shipped: dm.Demo):
    pytest.importorskip("gradio")
    app = dm.build_app(shipped)
    (classify,) = (fn for fn in app.fns.values() if fn.queue)  # the one queued event; loading an example is not
    assert classify.concurrency_limit == dm.CONCURRENCY == 2
    assert app._queue.max_size == dm.QUEUE_SIZE == 16 and app._queue.default_concurrency_limit == dm.CONCURRENCY
