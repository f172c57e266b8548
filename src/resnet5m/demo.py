"""`resnet5m demo`: an interactive page (Gradio) that classifies your images with the shipped weights.

Upload, paste or photograph an image, or click one of the bundled examples (CIFAR-10 test images, one per
class, that both shipped nets classify correctly): the page shows the top-5 classes (calibrated when the
weights hold a temperature), the 32x32 image the network sees and a Grad-CAM heatmap of the top class. The
network runs as `resnet5m predict` runs it. Gradio is imported only inside functions, so the package works
without it; `pip install -e ".[demo]"` adds it. The same app runs inline in a notebook (launch_inline).
"""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .argtypes import positive_int
from .data import CLASSES
from .errors import UserError
from .gradcam import gradcam, overlay
from .inputs import SIZE, Inputs, Unreadable, has_transparency, read_image
from .predict import predict_with
from .weights import MANIFEST, LoadedModel, default_weights, open_weights

if TYPE_CHECKING:
    import gradio

INSTALL_HINT = 'pip install -e ".[demo]"'
EXAMPLES_DIR = Path(__file__).with_name("demo_examples")
TOP_K = 5
SCALE = 8  # the 32x32 views are shown 256 px wide
# Larger images are refused before they are decoded: the net sees 32x32 pixels, so a smaller copy gives the
# same answer, and decoding e.g. 8000x8000 pixels would hold the server's memory and CPU for nothing.
MAX_PIXELS = 50_000_000
MAX_UPLOAD = "50mb"  # Gradio refuses larger uploads in the browser, before they reach the server
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
PROMPT = "Upload, paste or take a picture, or click an example."
# Gradio runs one request of an event at a time unless told otherwise, so one slow request (a 49-megapixel PNG takes
# 1.5 s to decode and resize on 2 cores) holds every other visitor's answer behind it: beside a stream of them, a
# 32x32 image's answer took 1.9 s (median) one at a time, 0.8 s two at a time. More than two would not answer faster:
# the network runs one request at a time anyway (Demo.classify), on torch's own intra-op threads, which already use
# both cores of the 2-core host the load test ran on (docs/results.md; on one thread it answered 30% fewer a second).
# QUEUE_SIZE bounds the requests waiting: at the 2.6-3 answers a second measured there, the 16th waits about 6 s;
# past that a visitor is told at once that the queue is full.
CONCURRENCY = 2
QUEUE_SIZE = 16
Outputs = tuple[dict[str, float] | None, np.ndarray | None, np.ndarray | None, str]  # top-5, seen, Grad-CAM, message


def import_gradio() -> ModuleType:
    """The gradio module, with its usage analytics off (the demo must not call out); a one-line error when missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported, before analytics_enabled applies
    try:
        import gradio
    except ImportError as e:
        raise UserError(f"the demo needs Gradio: {INSTALL_HINT}") from e
    return gradio


def weight_choices(weights: str | os.PathLike | None = None, arch: str | None = None) -> tuple[dict[str, Path], str]:
    """The weights on offer, by label: the shipped files that exist, and a given file first; and the default label."""
    choices: dict[str, Path] = {}
    if weights:
        choices[str(weights)] = Path(weights)
    for name in MANIFEST:
        try:
            path = default_weights(name)
        except UserError:  # neither in a checkout nor downloadable (no network): not offered
            continue
        if not (weights and path.resolve() == Path(weights).resolve()):  # the given file is not listed twice
            choices[name] = path
    if weights:
        return choices, str(weights)
    if arch:
        choices.setdefault(arch, default_weights(arch))  # an arch without shipped weights: the one-line error says so
        return choices, arch
    if not choices:
        raise UserError("no shipped weights found in ./weights or the source checkout's weights/; pass --weights PATH")
    return choices, next(iter(choices))


def read_upload(path: Path) -> tuple[torch.Tensor, list[str]]:
    """An uploaded file -> uint8 (3, 32, 32) RGB and notes on what was changed; Unreadable with a reason for the page."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below with a clearer message
            (width, height), mode, transparent = image.size, image.mode, has_transparency(image)
    except Image.DecompressionBombError as e:
        raise Unreadable(f"the image is far too large ({e}); upload one under {MAX_PIXELS / 1e6:.0f} megapixels") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise Unreadable("this file is not an image (upload a PNG, JPEG, WebP, BMP or GIF)") from e
    if width * height > MAX_PIXELS:
        raise Unreadable(
            f"the image is too large: {width}x{height} pixels, over the limit of {MAX_PIXELS / 1e6:.0f} megapixels; "
            "the network sees 32x32 pixels anyway, so a smaller copy gives the same answer"
        )
    pixels, resized = read_image(path)
    notes = [f"resized from {width}x{height} to {SIZE}x{SIZE} pixels (antialiased)"] if resized else []
    if mode.startswith("I") or mode == "F":
        notes.append(f"a {'float' if mode == 'F' else 'deep'} grayscale image ({mode}): scaled to 8 bits by the range its "
                     "values use, the same gray in each channel")  # fmt: skip
    elif mode in GRAY_MODES:
        notes.append(f"a grayscale image ({mode}): converted to RGB, the same gray in each channel")
    if transparent:
        notes.append(f"an image with transparency ({mode}): transparent pixels shown over white")
    elif mode not in GRAY_MODES and mode != "RGB":
        notes.append(f"a {mode} image: converted to RGB")
    return pixels, notes


class Demo:
    """The demo's weights on offer and what it computes for one image; each weights file is opened once, on first use.

    Safe to call from several threads (Gradio's workers): files are read in parallel, the networks run one at a time.
    """

    def __init__(self, choices: dict[str, Path], default: str, *, arch: str | None = None, device: str = "auto") -> None:
        self.choices, self.default, self.arch, self.device = choices, default, arch, device
        self._opened: dict[str, tuple[LoadedModel, nn.Module, torch.device]] = {}
        # Grad-CAM hooks the shared model's last block, and predict copies the model (batch-norm folding), so two
        # requests at once on one model read each other's activations or crash the copy: they take turns.
        self._network = threading.Lock()

    def model(self, label: str) -> tuple[LoadedModel, nn.Module, torch.device]:
        """The weights offered under label, opened on first use and kept."""
        if label not in self.choices:
            raise UserError(f"unknown weights {label!r}: choose one of {', '.join(self.choices)}")
        if label not in self._opened:
            arch = self.arch if label == self.default else None  # --arch describes the file given with it
            self._opened[label] = open_weights(self.choices[label], arch, self.device)
        return self._opened[label]

    def classify(self, path: str | os.PathLike | None, label: str) -> Outputs:
        """Top-5 probabilities, the 32x32 input and a Grad-CAM overlay (both enlarged), and a message in markdown.

        Bad input (not an image, too large, weights that do not load) gives the message alone, never an exception.
        """
        if not path:
            return None, None, None, PROMPT
        try:
            pixels, notes = read_upload(Path(path))
        except Unreadable as e:
            return None, None, None, f"**Cannot classify this file:** {e}"
        with self._network:
            try:
                loaded, model, device = self.model(label)
            except UserError as e:
                return None, None, None, f"**Cannot use these weights:** {e}"
            pred = predict_with(loaded, model, device, Inputs(pixels[None], [Path(path).name], torch.tensor([-1])))
            probs, classes = (t[0].tolist() for t in pred.top_k(TOP_K))
            try:
                heat = gradcam(model, pixels[None], classes[:1], device)[0]
            except UserError as e:  # graph exports (TorchScript, ONNX, int8) have no gradients; grad-cam may be missing
                heat, notes = None, [*notes, f"no Grad-CAM: {e}"]
        top = {CLASSES[c]: p for p, c in zip(probs, classes, strict=True)}
        if pred.temperature != 1:
            notes.append(f"probabilities calibrated at the temperature {pred.temperature:.3f} stored in the weights")
        else:
            notes.append("probabilities not calibrated: these weights hold no temperature (`resnet5m calibrate` fits one)")
        cam = None if heat is None else overlay(pixels, heat, SCALE)
        seen = pixels.permute(1, 2, 0).numpy().repeat(SCALE, 0).repeat(SCALE, 1)
        headline = f"**{CLASSES[classes[0]]}** ({100 * probs[0]:.1f}%) by the `{label}` weights{pred.views}"
        return top, seen, cam, "\n".join([headline, *(f"- {note}" for note in notes)])


def build_app(demo: Demo) -> gradio.Blocks:
    """The Gradio page: image input, weights selector and examples on the left; the results on the right."""
    gr = import_gradio()

    def classify_upload(upload: dict | None, label: str) -> Outputs:
        # Unpreprocessed (see gr.on below), an upload arrives as Gradio's file record, already in its cache
        return demo.classify(upload and upload.get("path"), label)

    examples = sorted(EXAMPLES_DIR.glob("*.png"))
    with gr.Blocks(title="resnet5m demo", analytics_enabled=False) as app:
        gr.Markdown(
            "## resnet5m: which CIFAR-10 class is your image?\n"
            f"Classes: {', '.join(CLASSES)}. Any image is resized to the 32x32 pixels the network was trained on."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(sources=["upload", "clipboard", "webcam"], label="your image", height=300)
                weights = gr.Dropdown(list(demo.choices), value=demo.default, label="weights")
                gr.Examples(
                    [[str(p)] for p in examples], inputs=image, label="CIFAR-10 test images", examples_per_page=len(examples)
                )
            with gr.Column():
                message = gr.Markdown(PROMPT, elem_id="message")
                top = gr.Label(num_top_classes=TOP_K, label="top-5 classes", elem_id="top")
                with gr.Row():
                    # taller than the 256-px views, which would otherwise lose their bottom rows to the label
                    seen = gr.Image(label=f"what the network sees ({SIZE}x{SIZE})", interactive=False, height=320)
                    cam = gr.Image(label="Grad-CAM: evidence for the top class", interactive=False, height=320)
        # preprocess=False: gr.Image would open the file itself and fail on a bad one with a bare 'Error';
        # the demo judges the file and explains what is wrong with it instead.
        gr.on(
            [image.change, weights.change], classify_upload, inputs=[image, weights], outputs=[top, seen, cam, message],
            preprocess=False, concurrency_limit=CONCURRENCY,
        )  # fmt: skip
    # default_concurrency_limit too, so that GRADIO_DEFAULT_CONCURRENCY_LIMIT cannot change any event's limit unseen
    return app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)


def serve(app: gradio.Blocks, *, share: bool, share_hint: str, **options: Any) -> None:
    """app.launch(share=share, **options) in the background, announced as Gradio would, with the caller's share hint.

    Gradio's own announcement ends "set `share=True` in `launch()`", which is no advice to someone who did not call
    launch(): Gradio is kept quiet and the lines are printed here. It still prints the public URL itself.
    """
    app.launch(share=share, quiet=True, prevent_thread_lock=True, **options)
    if not app.is_colab:  # Colab's browser reaches the page through Colab's proxy, not at this address
        print(f"* Running on local URL:  {app.local_url.rstrip('/')}")
    if not share:
        print(f"* To create a public link, {share_hint}.")


def launch_inline(
    weights: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    device: str = "auto",
    share: bool = False,
    height: int = 900,
) -> gradio.Blocks:
    """Serve the demo in the background and show it in the notebook cell; `.close()` on the result stops it.

    share: a temporary public gradio.live link as well. Off by default, also in Colab (where Gradio would turn it on):
    Colab shows the page through its own proxy, and a public link would let anyone who has it run the demo on this machine.
    """
    choices, default = weight_choices(weights, arch)
    demo = Demo(choices, default, arch=arch, device=device)
    demo.model(default)  # a file that does not load fails here, in the cell, not later on the page
    app = build_app(demo)
    serve(app, share=share, share_hint="call launch_inline(share=True)", inline=True, height=height, max_file_size=MAX_UPLOAD)
    return app


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m demo`."""
    parser.add_argument("--weights", help="also offer this weights file, selected first (any format predict reads)")
    parser.add_argument(
        "--arch", help="the weights' architecture (default: read from the file), or which shipped weights to select"
    )
    parser.add_argument("--port", type=positive_int, default=7860, help="serve on 127.0.0.1:PORT (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also serve on a temporary public gradio.live link")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def cmd_demo(args: argparse.Namespace) -> None:
    """Run `resnet5m demo` until Ctrl-C."""
    import_gradio()  # a missing Gradio is named before any weights are read
    choices, default = weight_choices(args.weights, args.arch)
    demo = Demo(choices, default, arch=args.arch, device=args.device)
    demo.model(default)  # bad weights: a one-line error now rather than a message on every page view
    app = build_app(demo)
    try:
        serve(
            app, share=args.share, share_hint="pass --share", server_name="127.0.0.1", server_port=args.port,
            max_file_size=MAX_UPLOAD,
        )  # fmt: skip
    except OSError as e:  # Gradio found the port taken (its message names launch() arguments, not our flags)
        raise UserError(f"cannot serve on 127.0.0.1:{args.port} (in use, or not allowed); choose another --port") from e
    app.block_thread()  # until Ctrl-C, which closes the server
