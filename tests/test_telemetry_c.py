"""firmware/runtime/telemetry.c against mcuprune/telemetry.py, bit for bit (host gcc, ASan + UBSan)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from host_c import host_build

from mcuprune.model.telemetry import exp_table, telemetry_from_tensors
from mcuprune.resources import RUNTIME_DIR

RUNTIME = RUNTIME_DIR
RECORD = struct.Struct("<IBHI16H")

# Reads cases (u32 count, i32 k, i32 d, then k logits, d activations, d reconstructions) until EOF,
# writes the 43-byte packed record of each. The buffers are malloc'd per case at their exact size,
# so ASan catches any read past them.
HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "telemetry.h"

static void *read_exact(FILE *f, size_t n)
{
    void *p = malloc(n > 0 ? n : 1);
    if (p == NULL || fread(p, 1, n, f) != n) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        return 2;
    }
    FILE *table_file = fopen(argv[1], "rb"), *in = fopen(argv[2], "rb"), *out = fopen(argv[3], "wb");
    if (table_file == NULL || in == NULL || out == NULL) {
        return 2;
    }
    uint16_t *table = read_exact(table_file, 256 * sizeof(uint16_t));
    int32_t head[3]; /* count (a u32 bit pattern), k, d */
    while (fread(head, sizeof head, 1, in) == 1) {
        int8_t *logits = read_exact(in, (size_t)head[1]);
        int8_t *act = read_exact(in, (size_t)head[2]);
        int8_t *recon = read_exact(in, (size_t)head[2]);
        mcup_telemetry t;
        t.count = (uint32_t)head[0];
        mcup_telemetry_compute(logits, head[1], act, recon, head[2], table, &t);
        uint8_t record[MCUP_TELEMETRY_BYTES];
        if (mcup_telemetry_pack(&t, record) != MCUP_TELEMETRY_BYTES) {
            return 1;
        }
        fwrite(record, 1, sizeof record, out);
        free(logits);
        free(act);
        free(recon);
    }
    free(table);
    fclose(out);
    fclose(in);
    fclose(table_file);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return host_build(tmp_path_factory.mktemp("telemetry-c") / "telemetry_host", [RUNTIME / "telemetry.c"], [RUNTIME],
                      text=HARNESS)


def _run(exe: Path, table: np.ndarray, cases: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
         tmp: Path) -> list[bytes]:
    (tmp / "table.bin").write_bytes(table.astype("<u2").tobytes())
    with open(tmp / "cases.bin", "wb") as f:
        for count, logits, act, recon in cases:
            f.write(struct.pack("<Iii", count, logits.size, act.size))
            f.write(logits.astype(np.int8).tobytes() + act.astype(np.int8).tobytes() + recon.astype(np.int8).tobytes())
    proc = subprocess.run([str(exe), str(tmp / "table.bin"), str(tmp / "cases.bin"), str(tmp / "out.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = (tmp / "out.bin").read_bytes()
    assert len(raw) == 43 * len(cases)
    return [raw[43 * i : 43 * (i + 1)] for i in range(len(cases))]


def _expected(table: np.ndarray, count: int, logits: np.ndarray, act: np.ndarray, recon: np.ndarray) -> bytes:
    """The Python definition, packed as docs/protocol.md's telemetry record."""
    tel = telemetry_from_tensors(logits[None], act[None], recon[None], table, first_count=count)
    return RECORD.pack(int(tel.count[0]), int(tel.top1[0]), int(tel.confidence_q15[0]), int(tel.recon_error[0]),
                       *(int(v) for v in tel.histogram[0]))


def _random_cases(rng: np.random.Generator, n: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    cases = []
    for i in range(n):
        k, d = int(rng.integers(1, 21)), int(rng.integers(1, 300))
        logits = rng.integers(-128, 128, size=k).astype(np.int8)
        if k > 2 and i % 3 == 0:
            logits[rng.integers(1, k)] = logits.max()  # a tie for the maximum: the first index wins
        act = rng.integers(-128, 128, size=d).astype(np.int8)
        if i % 4 == 0:
            act[: d // 2] = -128  # a ReLU layer's spike at its zero point
        recon = np.clip(act.astype(np.int16) + rng.integers(-20, 21, size=d), -128, 127).astype(np.int8)
        if i % 5 == 0:
            recon = rng.integers(-128, 128, size=d).astype(np.int8)
        cases.append((int(rng.integers(0, 2**32)) if i % 2 else i, logits, act, recon))
    return cases


@pytest.mark.parametrize("scale", [0.02, 0.197, 0.9])
def test_c_telemetry_matches_python_on_random_tensors(harness: Path, tmp_path: Path, scale: float) -> None:
    table = exp_table(scale)
    cases = _random_cases(np.random.default_rng(int(scale * 1000)), 300)
    got = _run(harness, table, cases, tmp_path)
    for i, (case, record) in enumerate(zip(cases, got, strict=True)):
        assert record == _expected(table, *case), f"case {i}: {RECORD.unpack(record)}"


def test_c_telemetry_extremes(harness: Path, tmp_path: Path) -> None:
    """Largest error and histogram counts the uint32/uint16 fields hold, one class, all classes equal."""
    table = exp_table(0.197)
    d = 65535  # every activation in one bin: the uint16 count is full
    cases = [
        (2**32 - 1, np.full(10, 127, np.int8), np.full(d, 127, np.int8), np.full(d, -128, np.int8)),
        (0, np.array([-128], np.int8), np.array([0], np.int8), np.array([0], np.int8)),
        (7, np.zeros(10, np.int8), np.arange(-128, 128, dtype=np.int8), np.arange(-128, 128, dtype=np.int8)),
        (8, np.array([-128] * 9 + [127], np.int8), np.array([-1, 0, 15, 16], np.int8), np.zeros(4, np.int8)),
    ]
    got = _run(harness, table, cases, tmp_path)
    for case, record in zip(cases, got, strict=True):
        assert record == _expected(table, *case)
    count, top1, confidence, error, *hist = RECORD.unpack(got[0])
    assert (count, top1, confidence, error) == (2**32 - 1, 0, (1 << 30) // (10 * 32768), d * 255**2)
    assert hist[15] == d and sum(hist) == d
    assert RECORD.unpack(got[1])[1:4] == (0, 32768, 0)  # one class: probability 1.0, no error
    assert RECORD.unpack(got[2])[4:] == (16,) * 16  # each int8 value once: 16 per bin
    assert RECORD.unpack(got[3])[1:3] == (9, 32768)  # the others are exp(-0.197 * 255) ~ 0 in the table


def test_c_telemetry_record_layout(harness: Path, tmp_path: Path) -> None:
    """Little-endian u32 count | u8 top1 | u16 confidence | u32 recon_error | u16 hist[16], 43 bytes."""
    table = exp_table(0.197)
    logits = np.array([0, 5], np.int8)
    act = np.array([-128, 127, 127], np.int8)
    recon = np.array([-126, 127, 127], np.int8)
    (record,) = _run(harness, table, [(0x01020304, logits, act, recon)], tmp_path)
    confidence = (1 << 30) // (32768 + int(table[5]))
    assert record[:4] == bytes([4, 3, 2, 1]) and record[4] == 1
    assert record[5:7] == confidence.to_bytes(2, "little") and record[7:11] == (4).to_bytes(4, "little")
    assert record[11:13] == (1).to_bytes(2, "little") and record[41:43] == (2).to_bytes(2, "little")
