"""Datasets as uint8 images: Fashion-MNIST (Debian IDX files), scikit-learn digits, user .npz.

Every dataset is normalised to one form: images uint8 (N, H, W, C) — HWC like the firmware —
and integer labels 0..K-1. The float model sees pixel / 255 and the int8 model pixel - 128, which
are the same real numbers (input scale 1/255, zero point -128), so quantizing the input is exact.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits as sk_load_digits

from mcuprune.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
BUILTIN = ("fashion-mnist", "digits")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1], the float model's input."""
    return x.astype(np.float32) / 255.0


def to_int8(x: np.ndarray) -> np.ndarray:
    """uint8 images -> int8 with zero point -128, the quantized model's input."""
    return (x.astype(np.int16) - 128).astype(np.int8)


# --- IDX ------------------------------------------------------------------------------------

def parse_idx(raw: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode an IDX file (optionally gzip-compressed) into an array of its shape."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{source}: corrupt gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{source}: not an IDX file (bad magic)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise UserError(f"{source}: unknown IDX element type 0x{type_code:02x}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise UserError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise UserError(f"{source}: IDX body has {len(raw) - header_end} bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)


def _read_idx(path: Path) -> np.ndarray:
    return parse_idx(path.read_bytes(), str(path))


def load_fashion_mnist(directory: Path | None = None) -> Dataset:
    directory = Path(directory or os.environ.get("MCUPRUNE_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    names = {
        "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise UserError(
                f"Fashion-MNIST file {stem}[.gz] not found in {directory}: "
                "install it with `apt-get install dataset-fashion-mnist`"
            )
        arrays[key] = _read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"Fashion-MNIST {split} split has images {x.shape} and labels {y.shape}")
    return Dataset(
        name="fashion-mnist",
        x_train=arrays["x_train"][..., None].copy(),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][..., None].copy(),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
    )


# --- scikit-learn digits (bundled with the package: small and offline) -----------------------

def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits() -> Dataset:
    bunch = sk_load_digits()
    # 0..16 intensities -> 0..255 so every dataset shares the uint8 input quantization.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    x_train, y_train, x_test, y_test = _split(x, y, 0.2, seed=0)
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


# --- user .npz ------------------------------------------------------------------------------

def _images_from_user(x: np.ndarray, source: str) -> np.ndarray:
    """(N,H,W) or (N,C,H,W), uint8 or float in [0,1] -> uint8 (N,H,W,C)."""
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim == 4:
        x = np.transpose(x, (0, 2, 3, 1))
    else:
        raise UserError(f"{source}: 'x' must have shape (N,H,W) or (N,C,H,W), got {x.shape}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise UserError(f"{source}: 'x' is empty (shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise UserError(f"{source}: float 'x' must lie in [0, 1] (got min {x.min()}, max {x.max()})")
        return np.rint(x * 255.0).astype(np.uint8)
    raise UserError(f"{source}: 'x' must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")


def _labels_from_user(y: np.ndarray, n: int, source: str, key: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{source}: '{key}' must have shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{source}: '{key}' must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise UserError(f"{source}: '{key}' has negative label {int(y.min())}; labels must be 0..K-1")
    return y.astype(np.int64)


def load_npz(path: Path) -> Dataset:
    source = str(path)
    if not path.exists():
        raise UserError(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError: all mean "not a valid npz"
        raise UserError(f"{source}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for key in ("x", "y"):
        if key not in contents:
            raise UserError(f"{source}: missing array '{key}' (found: {', '.join(sorted(contents)) or 'none'})")
    x = _images_from_user(contents["x"], source)
    y = _labels_from_user(contents["y"], len(x), source, "y")
    if "x_test" in contents or "y_test" in contents:
        if not ("x_test" in contents and "y_test" in contents):
            raise UserError(f"{source}: give both 'x_test' and 'y_test' or neither")
        x_test = _images_from_user(contents["x_test"], source)
        y_test = _labels_from_user(contents["y_test"], len(x_test), source, "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(f"{source}: 'x_test' images {x_test.shape[1:]} differ from 'x' {x.shape[1:]}")
        x_train, y_train = x, y
    else:
        if len(x) < 10:
            raise UserError(f"{source}: need at least 10 samples to split off a test set, got {len(x)}")
        x_train, y_train, x_test, y_test = _split(x, y, 0.2, seed=0)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise UserError(f"{source}: labels must contain at least 2 classes")
    if num_classes > 255:
        raise UserError(f"{source}: {num_classes} classes; at most 255 are supported")
    return Dataset(path.stem, x_train, y_train, x_test, y_test, num_classes)


def load_dataset(spec: str) -> Dataset:
    """'fashion-mnist', 'digits' or a path to a .npz file."""
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    if spec == "digits":
        return load_digits()
    if spec.endswith(".npz"):
        return load_npz(Path(spec))
    raise UserError(f"unknown dataset '{spec}': use fashion-mnist, digits, or a path to a .npz file")


# --- model inputs without labels (calibration, evaluation of a model that has no dataset) -------

def load_inputs_npz(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """`x` of a .npz: (N, *input_shape), or any shape with the same number of elements per sample
    (reshaped to input_shape). int8 means already quantized for the model; float means the model's
    own input units. Anything else gets a one-line UserError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise UserError(f"{path} has no array 'x' (it has {', '.join(npz.files) or 'none'}): save the inputs "
                                "as x, shape (N, *model input shape)")
            x = npz["x"]
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npz file ({str(exc).splitlines()[0]})") from None
    per_sample = int(np.prod(input_shape))
    if x.ndim < 1 or len(x) == 0 or x[0].size != per_sample:
        raise UserError(f"{path}: x has shape {x.shape}, the model takes (N, {', '.join(map(str, input_shape))}) "
                        f"({per_sample} elements per sample)")
    if x.dtype != np.int8 and not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: x is {x.dtype}; give int8 (already quantized) or float32 (the model's input units)")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise UserError(f"{path}: x holds NaN or infinite values")
    return x.reshape(len(x), *input_shape)
