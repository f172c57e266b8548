"""Reading your own images for `resnet5m predict` and the Classifier: files, folders, globs, arrays, pickles, PIL images.

Files become uint8 (N, 3, 32, 32) RGB: other sizes are resized with antialiasing, grayscale, palette,
16-bit, float and transparent images are converted (transparency over white). A file that cannot be read,
or holds content of the wrong kind (an array of another shape, a pickle without `data`), is skipped with its
reason, or stops the run under strict.
Pickles are read with an unpickler that builds nothing but plain containers and numpy arrays. In memory,
`as_images` takes tensors, arrays and PIL images too, and `check_pixels` holds them to uint8 or 0-1 floats.
"""

from __future__ import annotations

import glob
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import CLASSES
from .errors import UserError

SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
EXPECTED = "uint8 images of shape (N, 32, 32, 3), (N, 3, 32, 32) or (N, 3072) rows as in CIFAR-10's batches"
# npz members looked up by name, in this order; a file with one array needs no name
NPZ_IMAGES = ("data", "images", "x", "X")
NPZ_LABELS = ("labels", "y", "Y")
PIXELS = "uint8 (0-255) or float (0-1) images (N, 3, H, W)"
PIXEL_SLACK = 1e-3  # float pixels this far outside 0..1 are rounding, not another scale
# What numpy arrays need to be unpickled (numpy 1 and 2 module names; protocols 2 to 5); nothing else is built.
_PICKLE_GLOBALS = {
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class Unreadable(Exception):
    """A file that could not be decoded: skipped with this reason (an error under --strict)."""


@dataclass
class Part:
    """The images of one file, with what the file says about them."""

    images: torch.Tensor  # uint8 (n, 3, 32, 32)
    ids: list | None = None  # per image; None: named by the file, or by running index for arrays
    labels: torch.Tensor | None = None


@dataclass
class Inputs:
    """All images to classify, in input order, and what reading them noticed."""

    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    ids: list  # pickle ids or file names where known, else the running index
    labels: torch.Tensor  # int64 (N,), -1 where unknown
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    resized: int = 0

    @property
    def labelled(self) -> torch.Tensor:
        """Mask of the images whose true class the input carried."""
        return self.labels >= 0


class _ArrayUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only: a pickle from elsewhere runs no code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it holds a Python object ({module}.{name}) that is not loaded for safety")
        return super().find_class(module, name)


def expand(arg: str) -> list[tuple[Path, str]]:
    """One INPUT argument -> (file, name) pairs: a file as given, a folder's files recursively, a glob's matches, sorted."""
    path = Path(arg).expanduser()
    if path.is_dir():
        # Every file, whatever its name: images, arrays and pickles are read, anything else is listed as skipped.
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise UserError(f"folder {path} holds no files (searched recursively); put images, arrays or pickles in it")
        return [(p, p.relative_to(path).as_posix()) for p in files]
    if path.is_file():
        return [(path, arg)]
    if glob.has_magic(arg):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True) if os.path.isfile(m))
        if not matches:
            raise UserError(f"no file matches {arg}")
        return [(m, str(m)) for m in matches]
    raise UserError(f"input {arg} not found: expected an image file, a folder, a glob, a .npy/.npz array or a CIFAR-style pickle")


def from_array(array: np.ndarray, source: str) -> torch.Tensor:
    """uint8 (N, 32, 32, 3), (N, 3, 32, 32) or (N, 3072) rows -> uint8 (N, 3, 32, 32); one image may lack the N axis."""
    array = np.asarray(array)
    if array.ndim == 3 or array.ndim == 1:
        array = array[None]
    shape = array.shape[1:]
    if array.dtype != np.uint8 or shape not in ((3, SIZE, SIZE), (SIZE, SIZE, 3), (3 * SIZE * SIZE,)):
        raise UserError(f"{source}: expected {EXPECTED}, got {array.dtype} {tuple(array.shape)}")
    if shape == (SIZE, SIZE, 3):
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array).reshape(-1, 3, SIZE, SIZE))


def _labels(values: object, n: int, source: str) -> torch.Tensor:
    labels = np.asarray(values)
    integers = labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
    if not integers or (n and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise UserError(f"{source}: expected {n} integer labels in 0..{len(CLASSES) - 1}, got {labels.dtype} {labels.shape}")
    return torch.from_numpy(labels.astype(np.int64))


def _ids(values: object, n: int, source: str, key: str) -> list:
    ids = [v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v for v in values]
    if len(ids) != n:
        raise UserError(f"{source}: '{key}' has {len(ids)} entries for {n} images")
    return ids


def read_pickle(path: Path) -> Part:
    """A CIFAR-style pickle: a dict with `data` and optional `ids`, `labels`, `filenames` (bytes or str keys)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise Unreadable(f"not a readable pickle ({type(e).__name__}: {e})") from e  # junk bytes fail in many ways
    if isinstance(obj, dict):
        obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if not isinstance(obj, dict) or "data" not in obj:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: expected a dict with 'data' ({EXPECTED}) and optional 'ids', 'labels', 'filenames'; got {keys}")
    images = from_array(obj["data"], str(path))
    key = "ids" if "ids" in obj else "filenames" if "filenames" in obj else None
    ids = _ids(obj[key], len(images), str(path), key) if key else None
    labels = _labels(obj["labels"], len(images), str(path)) if "labels" in obj else None
    return Part(images, ids, labels)


def read_arrays(path: Path) -> Part:
    """A .npy array, or a .npz archive's images (with `labels`/`y` and `ids` when present)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise Unreadable(f"not a readable {path.suffix} file ({type(e).__name__})") from e
    if isinstance(loaded, np.ndarray):
        return Part(from_array(loaded, str(path)))
    with loaded:
        names = loaded.files
        key = next((k for k in NPZ_IMAGES if k in names), names[0] if len(names) == 1 else None)
        if key is None:
            raise UserError(f"{path}: expected the images under one of {', '.join(NPZ_IMAGES)} or as the only array; got {names}")
        images = from_array(loaded[key], f"{path}[{key}]")
        label_key = next((k for k in NPZ_LABELS if k in names), None)
        labels = _labels(loaded[label_key], len(images), f"{path}[{label_key}]") if label_key else None
        ids = _ids(loaded["ids"], len(images), str(path), "ids") if "ids" in names else None
    return Part(images, ids, labels)


def read_image(path: Path) -> tuple[torch.Tensor, bool]:
    """One image file -> uint8 (3, 32, 32) RGB and whether it had to be resized."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            resized = image.size != (SIZE, SIZE)
            image.draft("RGB", (SIZE, SIZE))  # JPEG: decode a large photo at a reduced scale (still >= 32 px), much faster
            pixels = pixels_of(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Unreadable(f"not a readable image ({type(e).__name__}: {e})") from e
    return fit_size(pixels), resized


def pixels_of(image: object) -> torch.Tensor:
    """A Pillow image of any mode -> uint8 (3, H, W) RGB, transparency over white."""
    return torch.from_numpy(np.asarray(_to_rgb(image)).copy()).permute(2, 0, 1)


def fit_size(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float (..., 3, H, W) -> (..., 3, 32, 32), antialiased: how every image of other size is made to fit."""
    if images.shape[-2:] == (SIZE, SIZE):
        return images
    # Imported here, not at the top: torchvision takes about 2 s to import, and most commands never resize.
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(images, [SIZE, SIZE], antialias=True)


def has_transparency(image: object) -> bool:
    """Whether a Pillow image carries transparency: an alpha channel, or a palette with a transparent entry."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _to_8bit(image: object) -> object:
    """A 16-bit, 32-bit integer or float Pillow image -> mode L, scaled by the range its values really use.

    Pillow's own conversion clips such values at 255, so a 16-bit PNG turns all white. Integers up to 255 are
    8-bit values already, up to 65535 (and every I;16 image) 16-bit ones; floats within 0..1 are fractions;
    anything else is stretched from its minimum to its maximum.
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (0 <= low and 255 < high <= 65535 and image.mode == "I"):
        scaled = values / 65535
    elif image.mode == "F" and 0 <= low and high <= 1:
        scaled = values
    elif 0 <= low and high <= 255:
        scaled = values / 255
    else:
        scaled = (values - low) / max(high - low, 1e-12)
    return Image.fromarray(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8))  # 2-D uint8: mode L


def _to_rgb(image: object) -> object:
    """Any Pillow mode -> RGB; transparent pixels become white rather than whatever colour they hide."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":  # one channel of more than 8 bits
        image = _to_8bit(image)
    if has_transparency(image):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def read_file(path: Path, name: str) -> tuple[Part, bool]:
    """Any supported file -> its images, and whether an image had to be resized; by suffix, else by content."""
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return read_arrays(path), False
    if suffix not in IMAGE_SUFFIXES:
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":  # the PROTO opcode every pickle of protocol 2+ starts with
                return read_pickle(path), False
    image, resized = read_image(path)  # Pillow recognises images by content, whatever their name
    return Part(image[None], ids=[name]), resized


def read_inputs(args: Sequence[str], strict: bool = False) -> Inputs:
    """Every INPUT argument's images in order; unreadable files are skipped with their reason (an error when strict)."""
    files = [pair for arg in args for pair in expand(arg)]
    parts, skipped, resized = [], [], 0
    for path, name in files:
        try:
            part, was_resized = read_file(path, name)
        # OSError: the file vanished or cannot be opened; UserError: content of the wrong kind (says what was expected)
        except (Unreadable, UserError, OSError) as e:
            reason = str(e).removeprefix(str(path)).removeprefix(": ")  # the path is said once, in front
            if strict:
                stop = "--strict stops at the first unreadable file; drop it to skip such files"
                raise UserError(f"{path}: {reason} ({stop})") from e
            skipped.append((str(path), reason))
            continue
        parts.append(part)
        resized += was_resized
    if not parts:
        path, reason = skipped[0]
        raise UserError(f"no readable images among the {len(files)} input file(s); the first, {path}: {reason}")
    ids: list = []
    for part in parts:  # arrays without ids are named by their running index in the output
        ids += part.ids if part.ids is not None else list(range(len(ids), len(ids) + len(part.images)))
    labels = [p.labels if p.labels is not None else torch.full((len(p.images),), -1, dtype=torch.int64) for p in parts]
    return Inputs(torch.cat([p.images for p in parts]), ids, torch.cat(labels), skipped, resized)


def check_pixels(x: object) -> torch.Tensor:
    """x as a batch (N, 3, H, W) of uint8 (0-255) or float (0-1) pixels; anything else is a UserError saying what to pass.

    Floats outside 0..1 are refused rather than guessed at: pixels scaled to 0-255, or already normalized, would
    otherwise give confident wrong answers.
    """
    if not isinstance(x, torch.Tensor):
        kind = type(x).__name__
        raise UserError(f"expected {PIXELS} as a tensor, got a {kind}; predict() also reads arrays, PIL images and paths")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        hint = "; for channels-last images pass x.permute(0, 3, 1, 2)" if x.ndim == 4 and x.shape[-1] == 3 else ""
        raise UserError(f"expected {PIXELS}, got shape {tuple(x.shape)}{hint}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise UserError(f"expected {PIXELS}, got {x.dtype}; pass x.to(torch.uint8) for 0-255 values")
    if x.numel():
        low, high = (v.item() for v in torch.aminmax(x.detach().float()))
        if low < -PIXEL_SLACK or high > 1 + PIXEL_SLACK:
            raise UserError(
                f"float pixels must lie in 0-1, these run from {low:.3g} to {high:.3g}: pass uint8 images as they are, "
                "float ones divided by 255 and not normalized (the classifier normalizes them itself)"
            )
    return x


def as_images(images: object) -> torch.Tensor:
    """Images in any form the classifier takes -> a batch (N, 3, H, W) of uint8 or float (0-1) pixels.

    A tensor (N, 3, H, W) or (3, H, W); a numpy array in those layouts, channels last (as PIL and OpenCV give
    them) or as CIFAR rows (N, 3072); a PIL image; a path, folder or glob (read as `resnet5m predict` reads
    them); or a list of any of these, each resized to 32x32 so that they stack.
    """
    if isinstance(images, torch.Tensor):
        return check_pixels(images)
    if isinstance(images, np.ndarray):
        return check_pixels(_array_pixels(images))
    if isinstance(images, (str, os.PathLike)):
        return read_inputs([os.fspath(images)], strict=True).images
    if _is_pil_image(images):
        return pixels_of(images)[None]
    if isinstance(images, (list, tuple)) and images:
        parts = [fit_size(as_images(item)) for item in images]
        if any(p.dtype != torch.uint8 for p in parts):  # mixed kinds: all as 0-1 floats
            parts = [p.float() / 255 if p.dtype == torch.uint8 else p.float() for p in parts]
        return torch.cat(parts)
    raise UserError(
        f"cannot read images from a {type(images).__name__}: pass a tensor, a numpy array, a PIL image, a path or a list of them"
    )


def _array_pixels(array: np.ndarray) -> torch.Tensor:
    if array.ndim <= 2:  # CIFAR rows (N, 3072), or one row
        return from_array(array, "the array")
    pixels = torch.from_numpy(np.ascontiguousarray(array))
    if pixels.shape[-1] == 3 and pixels.shape[-3] != 3:  # channels last: (H, W, 3) or (N, H, W, 3)
        pixels = pixels.movedim(-1, -3)
    return pixels


def _is_pil_image(obj: object) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)
