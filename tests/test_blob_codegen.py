"""Blob parameter mode: the blob's arrays, and the generated mcup_bind / mcup_monitor built for the host.

The host builds compile the generated blob-mode model.c with the reference kernels and the real
runtime files (blob.c, crc32.c, bind_check.c, telemetry.c) under -fsanitize=address,undefined, so
a blob that made the firmware read outside it would abort the harness instead of passing quietly.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from host_c import host_build

from mcuprune.codegen import emit as codegen
from mcuprune.codegen.blob import HEADER_BYTES, pack_blob, parse_blob, parse_header
from mcuprune.errors import UserError
from mcuprune.model.formats import pack
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.resources import BOARDS_DIR, BSP_DIR, INCLUDE_DIR, RUNTIME_DIR
from mcuprune.target.board import load_board
from mcuprune.train.datasets import to_int8

REPO = Path(__file__).resolve().parent.parent
RUNTIME = RUNTIME_DIR
HARNESS = Path(__file__).resolve().parent / "blob_harness" / "blob_host.c"
RUNTIME_SOURCES = ("bind_check.c", "blob.c", "crc32.c", "telemetry.c")
BAD_BLOB = 9  # MCUP_ERR_BAD_BLOB

# Every (op, format) kernel appears in one of the three builds; conv2d0 (cols = 9) has bitmask
# padding bits and a padded last block (block4), conv2d2 (cols = 144) and dense4 (128) long sparse rows.
FORMATS_A = {"conv2d0": "bitmask", "conv2d2": "csr8", "dense4": "csr4", "dense5": "dense"}
FORMATS_B = {"conv2d0": "csr4", "conv2d2": "dense", "dense4": "bitmask", "dense5": "csr8"}
FORMATS_C = {"conv2d0": "block4", "conv2d2": "block4", "dense4": "block4", "dense5": "dense"}
TELEMETRY_RECORD = struct.Struct("<IBHI16H")


def _masked_run(run_dir: Path, out: Path, quantile: float) -> Path:
    """The digits CNN with the `quantile` smallest weights of every layer zeroed."""
    import torch

    from mcuprune.train.training import _weight_modules, load_torch_model, save_run

    net, meta, _ = load_torch_model(run_dir)
    masks = []
    with torch.no_grad():
        for module in _weight_modules(net):
            w = module.weight.numpy()
            mask = np.abs(w) > np.quantile(np.abs(w), quantile)
            module.weight.mul_(torch.from_numpy(mask).float())
            masks.append(mask)
    save_run(out, net, meta, masks)
    return out


@pytest.fixture(scope="module")
def models(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Factory model (85 % pruned) and an update of the same architecture (95 % pruned, quantized
    with other calibration images), each with its monitor QSAE."""
    from mcuprune.controller.drift_qsae import build_monitor_qsae
    from mcuprune.quantize import quantize_image_model
    from mcuprune.target.compile import quantize_run
    from mcuprune.train.training import load_float_model

    run_dir, dataset = digits_run
    tmp = tmp_path_factory.mktemp("blob-models")
    model = quantize_run(_masked_run(run_dir, tmp / "p85", 0.85))
    float_update, _ = load_float_model(_masked_run(run_dir, tmp / "p95", 0.95))
    update = quantize_image_model(float_update, dataset.x_train[700:1100])
    return {
        "dataset": dataset,
        "model": model,
        "monitor": build_monitor_qsae(model, dataset.x_train[:800], steps=300, seed=0).model,
        "update": update,
        "update_monitor": build_monitor_qsae(update, dataset.x_train[:800], steps=300, seed=1).model,
    }


def _generate(model: QuantModel, monitor: QuantModel, formats: dict[str, str], src: Path,
              variant: str = "reference") -> codegen.GeneratedModel:
    """Blob-mode sources with the weight formats forced (choose_formats would pick by size)."""
    with mock.patch.object(codegen, "choose_formats", lambda *args, **kwargs: dict(formats)):
        return codegen.generate_model_sources(model, variant, src, params="blob", monitor=monitor)


def _host_build(model: QuantModel, monitor: QuantModel, formats: dict[str, str], out: Path) -> Path:
    gen = _generate(model, monitor, formats, out / "src")
    assert gen.formats == formats
    sources = [out / "src" / "model.c", out / "src" / "model_data.c", *gen.kernel_sources(model, "reference"),
               *(RUNTIME / name for name in RUNTIME_SOURCES), HARNESS]  # fmt: skip
    return host_build(out / "blob_host", sources, [out / "src", INCLUDE_DIR, RUNTIME, BSP_DIR])


@pytest.fixture(scope="module")
def host_a(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _host_build(models["model"], models["monitor"], FORMATS_A, tmp_path_factory.mktemp("host-a"))


@pytest.fixture(scope="module")
def host_b(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _host_build(models["model"], models["monitor"], FORMATS_B, tmp_path_factory.mktemp("host-b"))


@pytest.fixture(scope="module")
def host_c(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _host_build(models["model"], models["monitor"], FORMATS_C, tmp_path_factory.mktemp("host-c"))


def _run(exe: Path, blob: str | Path, x_uint8: np.ndarray, tmp: Path,
         bad: list[Path] = ()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits (N, K), telemetry rows (N, 20: count, top1, confidence, recon, hist) and the harness lines."""
    to_int8(x_uint8).tofile(tmp / "inputs.bin")
    cmd = [str(exe), "run", str(blob), str(tmp / "inputs.bin"), str(len(x_uint8)), str(tmp / "logits.bin"),
           str(tmp / "telemetry.bin"), *map(str, bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logits = np.fromfile(tmp / "logits.bin", dtype=np.int8).reshape(len(x_uint8), -1)
    raw = (tmp / "telemetry.bin").read_bytes()
    assert len(raw) == 43 * len(x_uint8)
    records = np.array([TELEMETRY_RECORD.unpack_from(raw, 43 * i) for i in range(len(x_uint8))], dtype=np.int64)
    return logits, records, proc.stdout.splitlines()


def _check(exe: Path, blob: bytes, tmp: Path, misalign: int = 0) -> dict[str, int]:
    path = tmp / "check.bin"
    path.write_bytes(blob)
    proc = subprocess.run([str(exe), "check", str(path), str(misalign)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # ASan/UBSan abort with a non-zero status
    return {k: int(v) for k, v in (field.split("=") for field in proc.stdout.split())}


def _expected_telemetry(model: QuantModel, monitor: QuantModel, x: np.ndarray) -> np.ndarray:
    from mcuprune.controller.drift_qsae import device_telemetry

    tel = device_telemetry(model, monitor, x)
    return np.column_stack([tel.count, tel.top1, tel.confidence_q15, tel.recon_error, tel.histogram])


# --- the blob's arrays --------------------------------------------------------------------------


def test_blob_round_trip_and_order(models) -> None:
    model, monitor = models["model"], models["monitor"]
    arrays = codegen.blob_arrays(model, FORMATS_A, monitor)
    weighted = [layer for layer in model.layers if layer.has_weights]
    expected_count = sum(len(codegen.BLOB_WEIGHT_FIELDS[FORMATS_A[layer.name]]) + 4 for layer in weighted) + 2 * 5 + 1
    assert len(arrays) == expected_count
    blob = codegen.build_blob(model, FORMATS_A, monitor, "reference")
    header, raw = parse_blob(blob)
    assert header.n_arrays == len(arrays) and header.length == len(blob)
    assert header.arch_hash == codegen.architecture_hash(model, "reference", FORMATS_A, params="blob", monitor=monitor)
    assert header.blob_id == header.data_crc == zlib.crc32(blob[HEADER_BYTES:])
    for a, r in zip(arrays, raw, strict=True):
        np.testing.assert_array_equal(np.frombuffer(r, dtype=a.dtype), a.ravel())
    # spot checks of the documented order: conv2d0 (bitmask) first, the confidence table last
    packed = pack(weighted[0].weights, "bitmask")
    np.testing.assert_array_equal(arrays[0], packed.mask)
    np.testing.assert_array_equal(arrays[1], packed.values)
    np.testing.assert_array_equal(arrays[2], weighted[0].bias)
    q = weighted[0]
    np.testing.assert_array_equal(arrays[5], [-q.input_q.zero_point, q.output_q.zero_point, q.act_min, q.act_max])
    from mcuprune.model.telemetry import exp_table

    np.testing.assert_array_equal(arrays[-1], exp_table(model.output_q.scale))
    assert codegen.build_blob(model, FORMATS_A, monitor, "reference", blob_id=7)[16:20] == (7).to_bytes(4, "little")


def test_empty_sparse_arrays_are_kept(models) -> None:
    """A layer pruned to nothing still has its (empty) arrays, so the array count is fixed."""
    from dataclasses import replace

    model, monitor = models["model"], models["monitor"]
    layers = list(model.layers)
    layers[-1] = replace(layers[-1], weights=np.zeros_like(layers[-1].weights))
    empty = replace(model, layers=tuple(layers))
    formats = dict(FORMATS_A, dense5="csr8")
    arrays = codegen.blob_arrays(empty, formats, monitor)
    assert len(arrays) == len(codegen.blob_arrays(model, formats, monitor))
    _, raw = parse_blob(codegen.build_blob(empty, formats, monitor, "reference"))
    assert [len(r) for r in raw[-18:-15]] == [0, 0, 11]  # dense5: values, deltas, row_ptr uint8[rows + 1]


def test_blob_architecture_hash(models) -> None:
    model, monitor, update = models["model"], models["monitor"], models["update"]
    static = codegen.architecture_hash(model, "reference", FORMATS_A)
    blob = codegen.architecture_hash(model, "reference", FORMATS_A, params="blob", monitor=monitor)
    assert static != blob
    assert static == codegen.architecture_hash(model, "reference", FORMATS_A, params="static")
    # parameters do not count, the monitor's shapes, formats and variant do
    assert blob == codegen.architecture_hash(update, "reference", FORMATS_A, params="blob",
                                             monitor=models["update_monitor"])
    assert blob != codegen.architecture_hash(model, "reference", FORMATS_B, params="blob", monitor=monitor)
    assert blob != codegen.architecture_hash(model, "dsp", FORMATS_A, params="blob", monitor=monitor)
    from mcuprune.controller.drift_qsae import build_monitor_qsae

    wider = build_monitor_qsae(model, models["dataset"].x_train[:200], hidden=40, steps=10).model
    assert blob != codegen.architecture_hash(model, "reference", FORMATS_A, params="blob", monitor=wider)


def test_blob_mode_input_errors(models, tmp_path: Path) -> None:
    model, monitor = models["model"], models["monitor"]
    with pytest.raises(UserError, match="needs the monitor"):
        codegen.generate_model_sources(model, "reference", tmp_path, params="blob")
    with pytest.raises(UserError, match="unknown params mode 'flash'"):
        codegen.generate_model_sources(model, "reference", tmp_path, params="flash")
    with pytest.raises(UserError, match="not a dense encoder and decoder"):
        codegen.build_blob(model, FORMATS_A, model, "reference")
    with pytest.raises(UserError, match="unknown weight format 'csr2'"):
        codegen.blob_arrays(model, dict(FORMATS_A, dense4="csr2"), monitor)


def test_generated_blob_sources(models, tmp_path: Path) -> None:
    model, monitor = models["model"], models["monitor"]
    gen = _generate(model, monitor, FORMATS_A, tmp_path, variant="dsp")
    h = (tmp_path / "model.h").read_text()
    c = (tmp_path / "model.c").read_text()
    data = (tmp_path / "model_data.c").read_text()
    assert "#define MCUP_PARAMS_BLOB          1" in h
    assert f"#define MCUP_PENULTIMATE_SIZE     {model.layers[-1].in_shape[0]}" in h
    assert f"#define MCUP_FACTORY_BLOB_BYTES   {len(gen.blob)}" in h
    assert f"#define MCUP_ARCH_HASH     0x{gen.arch_hash:08x}u" in h
    assert '#include "blob.h"' in h and '#include "telemetry.h"' in h
    # only the factory blob is data; no parameter is compiled into the layer structs
    assert data.count("const uint8_t mcup_param_factory_blob[MCUP_FACTORY_BLOB_BYTES]") == 1
    assert "mcup_param_conv2d0" not in data + c and ".multiplier" not in c.split("int mcup_bind")[0]
    assert gen.param_bytes == len(gen.blob) and [a.name for a in gen.arrays] == ["mcup_param_factory_blob"]
    assert "static mcup_fc_csr_params mcup_layer_dense4 = { .in_features = 128, .out_features = 64 };" in c
    assert "mcup_layer_dense4.row_ptr_bytes = mcup_bind_found[2].row_ptr_bytes;" in c
    # the monitor reads the last layer's input where the arena plan put it
    pen = gen.arena.offsets[gen.arena.storage[model.layers[-1].inputs[0]]]
    assert f"mcup_fc_s8_dense(&mcup_layer_dense5, mcup_arena + {pen}, logits, mcup_scratch);" in c
    assert f"return mcup_arena + {pen};" in c
    sources = {p.name for p in gen.kernel_sources(model, "dsp")}
    assert "fc_s8_dense.c" in sources  # the monitor's kernel


# --- int4 weights in the blob -------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_s4(models, digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The factory model's architecture with int4 weights in every weighted layer (85 % pruned), and
    an update of it (95 %), each quantized from the float model with weight_bits 4."""
    from dataclasses import replace

    from mcuprune.quantize import quantize_image_model
    from mcuprune.train.training import load_float_model

    run_dir, dataset = digits_run
    tmp = tmp_path_factory.mktemp("blob-s4")

    def int4(quantile: float, name: str, images: np.ndarray) -> QuantModel:
        float_model, _ = load_float_model(_masked_run(run_dir, tmp / name, quantile))
        layers = tuple(replace(la, weight_bits=4) if la.weights is not None else la for la in float_model.layers)
        return quantize_image_model(replace(float_model, layers=layers), images)

    return {"model": int4(0.85, "p85", dataset.x_train), "update": int4(0.95, "p95", dataset.x_train[700:1100])}


@pytest.fixture(scope="module", params=["a", "b", "c"])
def host_s4(request, models, models_s4, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    formats = {"a": FORMATS_A, "b": FORMATS_B, "c": FORMATS_C}[request.param]
    out = tmp_path_factory.mktemp(f"host-s4-{request.param}")
    exe = _host_build(models_s4["model"], models["monitor"], formats, out)
    return exe, formats


def test_int4_blob_arrays_are_half_length(models, models_s4) -> None:
    model, monitor = models_s4["model"], models["monitor"]
    assert {la.weight_bits for la in model.layers if la.has_weights} == {4}
    arrays = codegen.blob_arrays(model, FORMATS_A, monitor)
    weighted = [la for la in model.layers if la.has_weights]
    dense5 = next(la for la in weighted if la.name == "dense5")
    values = arrays[_index(model, FORMATS_A, "dense5", "weights")]
    assert values.dtype == np.uint8 and values.size == dense5.weights.shape[0] * ((dense5.weights.shape[1] + 1) // 2)
    bitmask = arrays[_index(model, FORMATS_A, "conv2d0", "values")]
    assert bitmask.dtype == np.uint8 and bitmask.size == (np.count_nonzero(weighted[0].weights) + 1) // 2
    # the width is part of the architecture: an int8 blob does not bind to int4 firmware
    arch8 = codegen.architecture_hash(models["model"], "reference", FORMATS_A, params="blob", monitor=monitor)
    arch4 = codegen.architecture_hash(model, "reference", FORMATS_A, params="blob", monitor=monitor)
    assert arch8 != arch4
    assert codegen.architecture_hash(models_s4["update"], "reference", FORMATS_A, params="blob",
                                     monitor=monitor) == arch4


def test_int4_factory_and_update_blobs_match_the_reference(models, models_s4, host_s4, tmp_path: Path) -> None:
    exe, formats = host_s4
    monitor, dataset = models["monitor"], models["dataset"]
    x = dataset.x_test[:150]
    model = models_s4["model"]
    logits, records, _ = _run(exe, "factory", x, tmp_path)
    np.testing.assert_array_equal(logits, run_s8(model, to_int8(x)))
    np.testing.assert_array_equal(records, _expected_telemetry(model, monitor, x))
    update = models_s4["update"]
    (tmp_path / "update.bin").write_bytes(codegen.build_blob(update, formats, monitor, "reference"))
    logits, _, _ = _run(exe, tmp_path / "update.bin", x, tmp_path)
    np.testing.assert_array_equal(logits, run_s8(update, to_int8(x)))


def test_int4_bind_checks_the_packed_lengths(models, models_s4, host_s4, tmp_path: Path) -> None:
    """The packed arrays' lengths are checked at 4 bits: a nibble's byte more or less is refused,
    as is an int8-length array."""
    exe, formats = host_s4
    model, monitor = models_s4["model"], models["monitor"]
    arch = codegen.architecture_hash(model, "reference", formats, params="blob", monitor=monitor)
    good = codegen.blob_arrays(model, formats, monitor)
    assert _check(exe, pack_blob(good, arch), tmp_path)["bind"] == 0
    for layer, fmt in formats.items():
        field = "weights" if fmt == "dense" else "values"
        i = _index(model, formats, layer, field)
        for name, array in {"short": good[i][:-1], "long": np.append(good[i], np.uint8(0)),
                            "int8_length": np.zeros(2 * good[i].size, np.uint8)}.items():
            blob = pack_blob([array if j == i else a for j, a in enumerate(good)], arch)
            assert _check(exe, blob, tmp_path)["bind"] == BAD_BLOB, (layer, fmt, name)


# --- the generated firmware code, on the host ---------------------------------------------------


@pytest.mark.parametrize("which", ["host_a", "host_b", "host_c"])
def test_factory_blob_logits_and_telemetry_match_the_reference(models, which: str, request, tmp_path: Path) -> None:
    exe = request.getfixturevalue(which)
    model, monitor, dataset = models["model"], models["monitor"], models["dataset"]
    x = dataset.x_test[:200]
    logits, records, lines = _run(exe, "factory", x, tmp_path)
    assert lines[0] == "unbound_run=-1 bound=0"  # no blob bound: mcup_run refuses
    np.testing.assert_array_equal(logits, run_s8(model, to_int8(x)))
    np.testing.assert_array_equal(records, _expected_telemetry(model, monitor, x))


def test_update_blob_of_another_model_binds_and_gives_its_logits(models, host_a: Path, tmp_path: Path) -> None:
    model, update, dataset = models["model"], models["update"], models["dataset"]
    factory = codegen.blob_arrays(model, FORMATS_A, models["monitor"])
    changed = codegen.blob_arrays(update, FORMATS_A, models["update_monitor"])
    # what the update really changes: non-zero counts, a row pointer width, zero points
    assert [a.size for a in factory] != [a.size for a in changed]
    assert any(a.dtype != b.dtype for a, b in zip(factory, changed, strict=True))
    assert any(a.input_q != b.input_q for a, b in zip(model.layers, update.layers, strict=True))
    blob = codegen.build_blob(update, FORMATS_A, models["update_monitor"], "reference")
    (tmp_path / "update.bin").write_bytes(blob)
    x = dataset.x_test[:200]
    logits, records, _ = _run(host_a, tmp_path / "update.bin", x, tmp_path)
    expected = run_s8(update, to_int8(x))
    np.testing.assert_array_equal(logits, expected)
    assert (expected != run_s8(model, to_int8(x))).any()
    np.testing.assert_array_equal(records, _expected_telemetry(update, models["update_monitor"], x))


def _recrc(blob: bytearray) -> bytes:
    """Valid CRCs again after editing a blob (the CRC is checked elsewhere; mcup_bind sees CRC-valid blobs)."""
    struct.pack_into("<I", blob, 24, zlib.crc32(bytes(blob[HEADER_BYTES:])))
    struct.pack_into("<I", blob, 28, zlib.crc32(bytes(blob[:28])))
    return bytes(blob)


def _index(model: QuantModel, formats: dict[str, str], layer: str, field: str) -> int:
    """Position of one array in the blob (codegen's documented order)."""
    i = 0
    for lay in model.layers:
        if not lay.has_weights:
            continue
        fields = codegen.BLOB_WEIGHT_FIELDS[formats[lay.name]] + ("bias", "multiplier", "shift", "quant")
        if lay.name == layer:
            return i + fields.index(field)
        i += len(fields)
    raise KeyError(layer)


def _corruptions(model: QuantModel, monitor: QuantModel, near_misses: bool = False) -> dict[str, bytes]:
    """CRC-valid blobs for FORMATS_A, each with one violation mcup_bind must catch (and nothing
    else wrong). With `near_misses`, the valid twins of the hand-built ones instead: they must bind."""
    arch = codegen.architecture_hash(model, "reference", FORMATS_A, params="blob", monitor=monitor)
    good = codegen.blob_arrays(model, FORMATS_A, monitor)

    def at(layer: str, field: str) -> int:
        return _index(model, FORMATS_A, layer, field)

    def edit(index: int, change) -> bytes:
        arrays = [a.copy() for a in good]
        arrays[index] = change(arrays[index].copy())
        return pack_blob(arrays, arch)

    def setting(position: int, value: int):
        def change(a: np.ndarray) -> np.ndarray:
            a[position] = value
            return a
        return change

    def replaced(changes: dict[int, np.ndarray]) -> bytes:
        return pack_blob([changes.get(i, a) for i, a in enumerate(good)], arch)

    # conv2d2 (csr8, 32 rows x 144 cols) rebuilt as one entry per row at column 0, so that swapping
    # two row pointers breaks only their order: every walk stays at column 0 and within the entries.
    # (The DSP kernels walk values and deltas sequentially: with row_ptr 0, 2, 1, 3 they would read
    # 2 + 0 + 2 entries of rows 0..2 where 3 exist.)
    row_ptr = np.arange(33, dtype=np.uint8)
    if not near_misses:
        row_ptr[1], row_ptr[2] = 2, 1
    one_per_row = replaced({at("conv2d2", "values"): np.ones(32, np.int8),
                            at("conv2d2", "deltas"): np.zeros(32, np.uint8),
                            at("conv2d2", "row_ptr"): row_ptr})
    # conv2d0 (bitmask, cols = 9: two mask bytes per row, bits 6..0 of the second are padding):
    # one more set bit and one more value, so the count matches and only the bit's column is wrong.
    mask = good[at("conv2d0", "mask")].copy()
    free_bit = 0x80 if near_misses else 0x01  # column 8 (valid) or column 15 (padding)
    row = int(np.argmax((mask[1::2] & free_bit) == 0))
    mask[2 * row + 1] |= free_bit
    values = np.append(good[at("conv2d0", "values")], np.int8(1))
    padding_bit = replaced({at("conv2d0", "mask"): mask, at("conv2d0", "values"): values})
    if near_misses:
        return {"one_entry_per_row": one_per_row, "bitmask_last_column": padding_bit}

    def delta_past_cols(deltas: np.ndarray) -> np.ndarray:
        row_ptr = good[at("conv2d2", "row_ptr")].astype(np.int64)
        row = int(np.argmax(np.diff(row_ptr) > 0))
        deltas[row_ptr[row + 1] - 1] = 255  # the row's last entry jumps past 144 columns
        return deltas

    blobs = {
        "count_short": pack_blob(good[:-1], arch),
        "count_long": pack_blob(good + [np.zeros(4, dtype=np.uint8)], arch),
        "arch_hash": pack_blob(good, arch ^ 1),
        "dense_weights_truncated": edit(at("dense5", "weights"), lambda a: a[:-1]),
        "bias_truncated": edit(at("conv2d2", "bias"), lambda a: a[:-1]),
        "quant_long": edit(at("dense4", "quant"), lambda a: np.append(a, np.int32(0))),
        "bitmask_values_short": edit(at("conv2d0", "values"), lambda a: a[:-1]),
        "bitmask_values_long": edit(at("conv2d0", "values"), lambda a: np.append(a, np.int8(1))),
        "bitmask_mask_short": edit(at("conv2d0", "mask"), lambda a: a[:-1]),
        "csr8_row_ptr_decreasing": one_per_row,
        "bitmask_padding_bit": padding_bit,
        "csr8_row_ptr_last_not_entries": edit(at("conv2d2", "row_ptr"), lambda a: np.append(a[:-1], a[-1] - 1)),
        "csr8_row_ptr_first_not_zero": edit(at("conv2d2", "row_ptr"), setting(0, 1)),
        "csr8_row_ptr_bad_length": edit(at("conv2d2", "row_ptr"), lambda a: a[:-1]),
        "csr8_delta_past_cols": edit(at("conv2d2", "deltas"), delta_past_cols),
        "csr8_deltas_short": edit(at("conv2d2", "deltas"), lambda a: a[:-1]),
        "csr4_delta_past_cols": edit(at("dense4", "deltas"), lambda a: np.full_like(a, 0xFF)),
        "csr4_deltas_short": edit(at("dense4", "deltas"), lambda a: a[:-1]),
        "act_min_above_act_max": edit(at("dense4", "quant"), lambda a: np.array([a[0], a[1], 100, 50], np.int32)),
        "input_offset_range": edit(at("dense4", "quant"), setting(0, 129)),
        "output_offset_range": edit(at("dense5", "quant"), setting(1, 128)),
        "act_max_range": edit(at("conv2d0", "quant"), setting(3, 128)),
        "multiplier_range": edit(at("dense5", "multiplier"), setting(0, 2**29)),
        "shift_too_left": edit(at("conv2d2", "shift"), setting(3, 31)),
        "shift_too_right": edit(at("conv2d2", "shift"), setting(3, -32)),
        "monitor_weights_truncated": edit(len(good) - 1 - 5 - 5, lambda a: a[:-1]),
        "exp_table_first": edit(len(good) - 1, setting(0, 30000)),
        "exp_table_short": edit(len(good) - 1, lambda a: a[:-1]),
    }
    packed = bytearray(pack_blob(good, arch))
    n = len(good)
    length = len(packed)

    def table(i: int, offset: int | None = None, size: int | None = None) -> bytes:
        blob = bytearray(packed)
        old_offset, old_size = struct.unpack_from("<II", blob, HEADER_BYTES + 8 * i)
        struct.pack_into("<II", blob, HEADER_BYTES + 8 * i, old_offset if offset is None else offset,
                         old_size if size is None else size)
        return _recrc(blob)

    off3, _ = struct.unpack_from("<II", packed, HEADER_BYTES + 8 * 3)
    off5, _ = struct.unpack_from("<II", packed, HEADER_BYTES + 8 * 5)
    blobs.update({  # each keeps the array's expected length, so only the table check can refuse it
        "offset_past_end": table(n - 1, offset=length + 4),
        "array_past_end": table(1, offset=length - 4),  # conv2d0's bitmask values, contents unchecked
        "offset_plus_length_wraps": table(5, size=2**32 - off5 + 8),
        "misaligned_offset": table(3, offset=off3 + 1),  # conv2d0's multiplier, int32
        "offset_inside_table": table(1, offset=HEADER_BYTES),  # conv2d0's values again
    })
    return blobs


def test_bind_rejects_corrupted_blobs(models, host_a: Path, tmp_path: Path) -> None:
    model, monitor = models["model"], models["monitor"]
    good = codegen.build_blob(model, FORMATS_A, monitor, "reference")
    assert _check(host_a, good, tmp_path) == {"header": 0, "data": 1, "check": 0, "bind": 0, "bound": 1}
    for name, blob in _corruptions(model, monitor).items():
        header = parse_header(blob)  # header and CRCs valid: only mcup_bind's checks stand in the way
        assert header.length == len(blob) and header.data_crc == zlib.crc32(blob[HEADER_BYTES:]), name
        result = _check(host_a, blob, tmp_path)
        assert result == {"header": 0, "data": 1, "check": BAD_BLOB, "bind": BAD_BLOB, "bound": 0}, name
    for name, blob in _corruptions(model, monitor, near_misses=True).items():  # the hand-built ones' valid twins
        assert _check(host_a, blob, tmp_path) == {"header": 0, "data": 1, "check": 0, "bind": 0, "bound": 1}, name
    # the int32 arrays are read in place: a blob at an address that is not 4-aligned is refused
    assert _check(host_a, good, tmp_path, misalign=1)["bind"] == BAD_BLOB


def _block4_corruptions(model: QuantModel, monitor: QuantModel, near_misses: bool = False) -> dict[str, bytes]:
    """CRC-valid blobs for FORMATS_C (block4 layers), each with one violation of the block4 checks in
    bind_check.c; with `near_misses`, valid twins of the hand-built ones (they must bind)."""
    arch = codegen.architecture_hash(model, "reference", FORMATS_C, params="blob", monitor=monitor)
    good = codegen.blob_arrays(model, FORMATS_C, monitor)

    def at(layer: str, field: str) -> int:
        return _index(model, FORMATS_C, layer, field)

    def edit(index: int, change) -> bytes:
        arrays = [a.copy() for a in good]
        arrays[index] = change(arrays[index].copy())
        return pack_blob(arrays, arch)

    def replaced(changes: dict[int, np.ndarray]) -> bytes:
        return pack_blob([changes.get(i, a) for i, a in enumerate(good)], arch)

    row_ptr = good[at("conv2d2", "row_ptr")].astype(np.int64)  # conv2d2: 32 rows of 36 blocks (144 columns)
    long_row = int(np.argmax(np.diff(row_ptr) >= 2))  # a row of two blocks or more
    last = int(row_ptr[long_row + 1]) - 1  # its last block

    def last_col(value: int):
        def change(cols: np.ndarray) -> np.ndarray:
            cols[last] = max(value, int(cols[last - 1]) + 1)  # still increasing: only the range is wrong
            return cols
        return change

    # conv2d2 rebuilt as one block per row, row r's at block column r, so that swapping two row pointers
    # breaks only their order (rows 0..2 then read blocks [0, 2), [2, 1), [1, 3): their columns increase)
    ptr = np.arange(33, dtype=np.uint8)
    if not near_misses:
        ptr[1], ptr[2] = 2, 1
    one_per_row = replaced({at("conv2d2", "values"): np.ones(4 * 32, np.int8),
                            at("conv2d2", "block_cols"): np.arange(32, dtype=np.uint8),
                            at("conv2d2", "row_ptr"): ptr})
    if near_misses:
        return {"block4_last_block_column": edit(at("conv2d2", "block_cols"), last_col(35)),
                "block4_one_block_per_row": one_per_row}

    def repeated(cols: np.ndarray) -> np.ndarray:
        cols[last] = cols[last - 1]
        return cols

    return {
        "block4_col_past_blocks": edit(at("conv2d2", "block_cols"), last_col(36)),
        "block4_fc_col_past_blocks": edit(at("dense4", "block_cols"), lambda a: np.append(a[:-1], np.uint8(32))),
        "block4_cols_not_increasing": edit(at("conv2d2", "block_cols"), repeated),
        "block4_row_ptr_decreasing": one_per_row,
        "block4_row_ptr_first_not_zero": edit(at("conv2d2", "row_ptr"), lambda a: np.append(a[:1] + 1, a[1:])),
        "block4_row_ptr_last_not_blocks": edit(at("conv2d2", "row_ptr"), lambda a: np.append(a[:-1], a[-1] - 1)),
        "block4_row_ptr_bad_length": edit(at("conv2d2", "row_ptr"), lambda a: a[:-1]),
        "block4_values_short": edit(at("conv2d2", "values"), lambda a: a[:-1]),
        "block4_values_one_block_short": edit(at("dense4", "values"), lambda a: a[:-4]),
        "block4_block_cols_short": edit(at("conv2d0", "block_cols"), lambda a: a[:-1]),
        "block4_block_cols_uint16": edit(at("conv2d2", "block_cols"), lambda a: a.astype(np.uint16)),
    }


def test_bind_checks_block4_arrays(models, host_c: Path, tmp_path: Path) -> None:
    """block4 layers (conv 9 and 144 columns, FC 128): the factory blob binds; a block column past the
    row's blocks or out of order, row pointers that do not cover the block columns, and arrays of the
    wrong length are refused; their valid twins bind."""
    model, monitor = models["model"], models["monitor"]
    good = codegen.build_blob(model, FORMATS_C, monitor, "reference")
    assert _check(host_c, good, tmp_path) == {"header": 0, "data": 1, "check": 0, "bind": 0, "bound": 1}
    for name, blob in _block4_corruptions(model, monitor).items():
        result = _check(host_c, blob, tmp_path)
        assert result == {"header": 0, "data": 1, "check": BAD_BLOB, "bind": BAD_BLOB, "bound": 0}, name
    for name, blob in _block4_corruptions(model, monitor, near_misses=True).items():
        assert _check(host_c, blob, tmp_path) == {"header": 0, "data": 1, "check": 0, "bind": 0, "bound": 1}, name


def test_block4_update_blob_binds_and_gives_its_logits(models, host_c: Path, tmp_path: Path) -> None:
    """An update of other block counts (95 % pruned) binds to the block4 firmware and serves its logits."""
    update, dataset = models["update"], models["dataset"]
    factory = codegen.blob_arrays(models["model"], FORMATS_C, models["monitor"])
    changed = codegen.blob_arrays(update, FORMATS_C, models["update_monitor"])
    assert [a.size for a in factory] != [a.size for a in changed]
    (tmp_path / "update.bin").write_bytes(codegen.build_blob(update, FORMATS_C, models["update_monitor"], "reference"))
    x = dataset.x_test[:100]
    logits, records, _ = _run(host_c, tmp_path / "update.bin", x, tmp_path)
    np.testing.assert_array_equal(logits, run_s8(update, to_int8(x)))
    np.testing.assert_array_equal(records, _expected_telemetry(update, models["update_monitor"], x))


def test_failed_binds_leave_the_bound_blob_serving(models, host_a: Path, tmp_path: Path) -> None:
    model, monitor, dataset = models["model"], models["monitor"], models["dataset"]
    bad = []
    for name, blob in _corruptions(model, monitor).items():
        bad.append(tmp_path / f"{name}.bin")
        bad[-1].write_bytes(blob)
    x = dataset.x_test[:50]
    logits, records, lines = _run(host_a, "factory", x, tmp_path, bad=bad)
    assert lines[1:] == [f"bad={BAD_BLOB} bound=1"] * len(bad)
    np.testing.assert_array_equal(logits, run_s8(model, to_int8(x)))
    np.testing.assert_array_equal(records, _expected_telemetry(model, monitor, x))


def test_blob_on_a_board_with_slots_only(models, tmp_path: Path) -> None:
    from mcuprune.target.compile import compile_model

    model, monitor = models["model"], models["monitor"]
    with pytest.raises(UserError, match=r"board nucleo-f446re has no \[slots\].*mps2-an385, mps2-an386, mps2-an500"):
        compile_model(model, load_board("nucleo-f446re"), tmp_path / "fw", "dsp", params="blob", monitor=monitor)
    with pytest.raises(UserError, match="--kernels tvm"):
        compile_model(model, load_board("mps2-an386"), tmp_path / "fw", "tvm", params="blob", monitor=monitor)
    with pytest.raises(UserError, match="needs the monitor"):
        compile_model(model, load_board("mps2-an386"), tmp_path / "fw", "dsp", params="blob")
    assert not (tmp_path / "fw").exists()  # refused before writing anything


def test_prepare_project_copies_blob_runtime_only_for_blob_builds(tmp_path: Path) -> None:
    from mcuprune.target.build import BLOB_ONLY_SOURCES, prepare_project

    board = load_board("mps2-an386")
    prepare_project(tmp_path / "static", board, [])
    prepare_project(tmp_path / "blob", board, [], params="blob")
    static = {p.name for p in (tmp_path / "static" / "src").iterdir()}
    blob = {p.name for p in (tmp_path / "blob" / "src").iterdir()}
    present = {name for name in BLOB_ONLY_SOURCES if (RUNTIME / name).is_file()}
    assert {"bind_check.c", "blob.c", "telemetry.c"} <= present
    assert not static & present and present <= blob
    assert {"blob.h", "telemetry.h", "bind_check.h"} <= static  # headers are harmless, and main.c may include them
    assert "MCUP_SLOTS" not in (tmp_path / "static" / "Makefile").read_text()
    assert "-DMCUP_SLOTS_BASE=0x21000000u -DMCUP_SLOTS_SIZE=0x01000000u" in (tmp_path / "blob" / "Makefile").read_text()
    with pytest.raises(UserError, match="no \\[slots\\]"):
        prepare_project(tmp_path / "x", load_board("mps3-an547"), [], params="blob")
    # switching a directory back to static removes the blob-only copies
    prepare_project(tmp_path / "blob", board, [])
    assert not {p.name for p in (tmp_path / "blob" / "src").iterdir()} & present


# --- boards -------------------------------------------------------------------------------------


def test_mps2_boards_have_slots_in_qemu_machine_ram() -> None:
    # QEMU 7.2 `info mtree`: AN385/AN386 machine RAM "mps.ram" at 0x21000000, AN500 at 0x60000000
    bases = {"mps2-an385": 0x21000000, "mps2-an386": 0x21000000, "mps2-an500": 0x60000000}
    for name, base in bases.items():
        slots = load_board(name).slots
        assert (slots.base, slots.size, slots.persistence) == (base, 16 << 20, "qemu-memory-backend")
        assert slots.capacity == ((16 << 20) - 4096) // 2 // 4096 * 4096
    assert load_board("nucleo-f446re").slots is None


@pytest.mark.parametrize("slots, message", [
    ("base = 0x21000000\nsize = 0x1000000", "needs field `slots.persistence`"),
    ('base = 0x21000000\nsize = 0x1000000\npersistence = "eeprom"', "`slots.persistence` must be one of"),
    ('base = 0x21000100\nsize = 0x1000000\npersistence = "qemu-memory-backend"', "aligned to 4096"),
    ('base = 0x21000000\nsize = 0x2000\npersistence = "qemu-memory-backend"', "`slots.size` must be at least"),
    ('base = 0x20000000\nsize = 0x1000000\npersistence = "qemu-memory-backend"', "overlaps the RAM region"),
    ('base = 0x21000000\nsize = 0x1000000\npersistence = "qemu-memory-backend"\nextra = 1',
     "unknown field `slots.extra`"),
    ("", "needs field `slots.base`"),
])
def test_slots_schema_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slots: str, message: str) -> None:
    text = (BOARDS_DIR / "mps2-an386.toml").read_text().split("[slots]")[0]
    (tmp_path / "mps2-an386.toml").write_text(f"{text}[slots]\n{slots}\n")
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=message):
        load_board("mps2-an386")


# --- an ARM build of blob firmware and its firmware directory -----------------------------------


def test_compile_blob_firmware_directory(models, tmp_path: Path) -> None:
    """compile_model --params blob builds for the M4 and leaves what update blobs need in the directory."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    from mcuprune.target.compile import compile_model, load_firmware_dir

    model, monitor = models["model"], models["monitor"]
    fw_dir = tmp_path / "fw"
    try:
        result = compile_model(model, load_board("mps2-an386"), fw_dir, "dsp", objective="smallest", params="blob",
                               monitor=monitor)
    except UserError as exc:
        if "firmware build" in str(exc):
            pytest.skip(f"the runtime's blob firmware does not build yet: {exc}")
        raise
    info = json.loads((fw_dir / "firmware.json").read_text())
    assert info["params"] == "blob" and info["blob"]["file"] == "blob.bin" and info["monitor"] == "monitor"
    assert (fw_dir / "blob.bin").read_bytes() == result.generated.blob
    assert result.build.model_flash_bytes == len(result.generated.blob)  # counted as model flash
    fw = load_firmware_dir(fw_dir)
    assert fw.params == "blob" and fw.variant == "dsp" and fw.formats == result.generated.formats
    assert fw.arch_hash == result.generated.arch_hash and fw.blob_path.read_bytes() == result.generated.blob
    assert [layer.name for layer in fw.monitor.layers] == ["encoder", "decoder"]
    np.testing.assert_array_equal(fw.monitor.layers[0].weights, monitor.layers[0].weights)
    # an update blob of the same architecture, and a refusal for another one
    update = fw.update_blob(models["update"], models["update_monitor"], blob_id=5)
    header, _ = parse_blob(update)
    assert header.arch_hash == fw.arch_hash and header.blob_id == 5
    assert fw.update_blob(model, monitor) == result.generated.blob
    from dataclasses import replace

    other = replace(model, layers=(replace(model.layers[0], dilation=(2, 2)),) + model.layers[1:])
    with pytest.raises(UserError, match="re-flash"):
        fw.update_blob(other, monitor)


def test_cli_compile_params(digits_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcuprune.cli import build_parser, main

    run_dir, _ = digits_run
    assert build_parser().parse_args(["compile", "run", "--out", "fw"]).params == "static"
    assert build_parser().parse_args(["compile", "run", "--out", "fw", "--params", "blob"]).params == "blob"
    out = str(tmp_path / "fw")
    code = main(["compile", str(run_dir), "--board", "nucleo-f446re", "--params", "blob", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "board nucleo-f446re has no [slots] region" in err and "mps2-an386" in err
