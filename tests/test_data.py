"""IDX and .npz parsing, and the uint8 image convention shared by all datasets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mcuprune.errors import UserError
from mcuprune.train.datasets import (
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_npz,
    parse_idx,
    to_float,
    to_int8,
)


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_idx_round_trip_plain_and_gzip() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert (parse_idx(idx_bytes(images)) == images).all()
    assert (parse_idx(gzip.compress(idx_bytes(images))) == images).all()


def test_idx_big_endian_int32() -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    assert parse_idx(idx_bytes(values, 0x0C)).tolist() == [1, -2, 70000]


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX element type"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "IDX body has 2 bytes"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_idx_errors_are_clear(raw: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_idx(raw, "test.idx")


def test_fashion_mnist_from_debian_package() -> None:
    ds = load_fashion_mnist()
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8
    assert sorted(np.unique(ds.y_test).tolist()) == list(range(10))
    assert np.bincount(ds.y_train).tolist() == [6000] * 10  # the published class balance


def test_missing_fashion_mnist_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_digits_is_split_deterministically() -> None:
    a, b = load_digits(), load_digits()
    assert a.x_train.shape[1:] == (8, 8, 1) and len(a.x_test) == 359
    assert (a.y_test == b.y_test).all() and a.x_train.max() == 255


def test_input_conventions_agree() -> None:
    x = np.array([0, 1, 128, 255], dtype=np.uint8)
    # float pixel/255 == scale (1/255) * (int8 - (-128)): the int8 input is exact.
    assert np.allclose(to_float(x), (to_int8(x).astype(np.float32) + 128) / 255.0)


def test_npz_nchw_float_and_nhw_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "nchw.npz"
    np.savez(p, x=rng.random((20, 3, 5, 6)).astype(np.float32), y=np.arange(20) % 4)
    ds = load_npz(p)
    assert ds.x_train.shape[1:] == (5, 6, 3) and ds.num_classes == 4
    assert len(ds.x_train) + len(ds.x_test) == 20
    q = tmp_path / "nhw.npz"
    np.savez(q, x=rng.integers(0, 256, (12, 7, 7), dtype=np.uint8), y=np.arange(12) % 3,
             x_test=np.zeros((2, 7, 7), np.uint8), y_test=np.array([0, 2]))
    ds = load_dataset(str(q))
    assert ds.x_train.shape == (12, 7, 7, 1) and ds.x_test.shape == (2, 7, 7, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((10, 4, 4), np.uint8)}, "missing array 'y'"),
    ({"x": np.zeros((10, 4), np.uint8), "y": np.zeros(10, int)}, "shape"),
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.zeros(9, int)}, "must have shape \\(10,\\)"),
    ({"x": np.full((10, 4, 4), 2.0), "y": np.zeros(10, int)}, "must lie in \\[0, 1\\]"),
    ({"x": np.zeros((10, 4, 4), np.int32), "y": np.zeros(10, int)}, "dtype int32"),
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": np.full(10, 0.5)}, "integer class labels"),
    ({"x": np.zeros((10, 4, 4), np.uint8), "y": -np.ones(10, int)}, "negative label"),
])
def test_malformed_npz_is_explained(tmp_path: Path, arrays: dict, message: str) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(UserError, match=message):
        load_npz(p)


def test_not_an_npz(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    p.write_bytes(b"this is not a zip file")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_npz(p)
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("cifar")
