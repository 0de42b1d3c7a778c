"""Fuzz the host protocol parsers at volume and write bench/fuzz/RESULTS.md.

The properties are those of tests/test_protocol_fuzz.py (imported from there, so CI and this bench
check the same thing); here a seeded numpy generator drives them instead of hypothesis, so runs are
reproducible (--seed) and cheap per input:

* stream inputs: a stream of 1..12 items (valid, duplicated, bit-flipped, byte-changed, truncated,
  over-long frames, garbage, runs longer than any frame) cut into random pieces; FrameReader must
  yield exactly the valid frames;
* raw inputs: random bytes (with some 0x00) in random pieces; the reader must not raise and must
  agree with one feed of the whole stream;
* parser inputs: for every unpack_* / decode_*: random bytes, and mutated valid payloads; only
  FrameError may come out, and what is accepted must pack back to the same bytes.

    .venv/bin/python bench/fuzz/host_fuzz.py [--seed 0] [--streams 40000] [--raw 20000] [--parser 60000]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.device.frames import MAX_PAYLOAD, Frame, FrameReader  # noqa: E402


def _load_properties():  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location("protocol_fuzz", ROOT / "tests" / "test_protocol_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


props = _load_properties()
KINDS = ["frame", "frame", "duplicate", "garbage", "flip_bit", "flip_byte", "truncate", "oversize", "long"]


def random_frame(rng: np.random.Generator) -> Frame:
    size_class = rng.random()
    if size_class < 0.75:
        size = int(rng.integers(0, 65))
    elif size_class < 0.95:
        size = int(rng.integers(240, 521))
    else:
        size = int(rng.integers(MAX_PAYLOAD - 8, MAX_PAYLOAD + 1))
    payload = rng.integers(0, 256, size, dtype=np.uint8)
    if rng.random() < 0.3:
        payload[rng.random(size) < 0.3] = 0  # plenty of zeros: many COBS blocks
    return Frame(int(rng.integers(0, 256)), int(rng.integers(0, 65536)), payload.tobytes())


def random_item(rng: np.random.Generator) -> tuple:
    kind = KINDS[int(rng.integers(0, len(KINDS)))]
    big = lambda: int(rng.integers(0, 2**32))  # noqa: E731
    if kind in ("frame", "duplicate"):
        return (kind, random_frame(rng))
    if kind == "garbage":
        data = rng.integers(0, 256, int(rng.integers(0, 201)), dtype=np.uint8)
        return (kind, data.tobytes())
    if kind in ("flip_bit", "truncate"):
        return (kind, random_frame(rng), big())
    if kind == "flip_byte":
        return (kind, random_frame(rng), big(), big())
    if kind == "oversize":
        return (kind, big(), big(), big())
    return (kind, rng.integers(0, 256, int(rng.integers(0, 9)), dtype=np.uint8).tobytes(), big())


def random_cuts(rng: np.random.Generator, length: int) -> list[int]:
    n = int(rng.integers(0, 41))
    if rng.random() < 0.1:
        return list(range(0, length, int(rng.integers(1, 4))))  # byte by byte, or nearly
    return [int(c) for c in rng.integers(0, length + 1, n)]


def check_raw(data: bytes, cuts: list[int]) -> None:
    whole = FrameReader().feed(data)
    reader = FrameReader(noise_limit=64)
    got = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        got += reader.feed(data[lo:hi])
    assert got == whole and len(reader.noise) <= 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streams", type=int, default=40_000)
    ap.add_argument("--raw", type=int, default=20_000)
    ap.add_argument("--parser", type=int, default=60_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "fuzz" / "RESULTS.md")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    failures: list[str] = []  # the first 20
    n_failures = 0
    counts = {"streams": 0, "raw": 0, "parser": 0}
    stream_bytes = 0
    accepted = dict.fromkeys(props.PARSERS, 0)
    tried = dict.fromkeys(props.PARSERS, 0)
    names = sorted(props.PARSERS)
    start = time.perf_counter()

    def record(kind: str, i: int) -> None:
        nonlocal n_failures
        n_failures += 1
        if len(failures) < 20:
            failures.append(f"{kind} #{i}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")

    for i in range(args.streams):
        items = [random_item(rng) for _ in range(int(rng.integers(1, 13)))]
        wire_len = len(props.build_stream(items)[0])
        try:
            stream_bytes += props.check_reader(items, random_cuts(rng, wire_len))
        except Exception:  # noqa: BLE001 - every failure is recorded
            record("stream", i)
        counts["streams"] += 1
    for i in range(args.raw):
        data = rng.integers(0, 256, int(rng.integers(0, 5001)), dtype=np.uint8)
        data[rng.random(data.size) < rng.choice([0.0, 0.001, 0.02])] = 0
        try:
            check_raw(data.tobytes(), random_cuts(rng, data.size))
        except Exception:  # noqa: BLE001
            record("raw", i)
        counts["raw"] += 1
    for i in range(args.parser):
        name = names[i % len(names)]
        if rng.random() < 0.3:
            payload = rng.integers(0, 256, int(rng.integers(0, 121)), dtype=np.uint8).tobytes()
        else:
            seeds = props.PARSERS[name][2]
            ops = [tuple(int(v) for v in (rng.integers(0, 5), rng.integers(0, 2**16), rng.integers(0, 256)))
                   for _ in range(int(rng.integers(0, 7)))]
            payload = props.mutate(seeds[int(rng.integers(0, len(seeds)))], ops)
        try:
            accepted[name] += props.check_parser(name, payload)
        except Exception:  # noqa: BLE001
            record(f"parser {name}", i)
        tried[name] += 1
        counts["parser"] += 1
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    command = "python bench/fuzz/host_fuzz.py" + "".join(
        f" --{k} {v}" for k, v in (("seed", args.seed), ("streams", args.streams), ("raw", args.raw),
                                   ("parser", args.parser)))
    lines = [
        "# Host protocol parser fuzzing",
        "",
        "Properties: tests/test_protocol_fuzz.py (see bench/fuzz/host_fuzz.py's docstring); a seeded numpy",
        "generator drives them here, hypothesis does in CI (a few thousand examples).",
        "",
        f"Command: `{command}`",
        "",
        f"* inputs: **{total:,}** ({counts['streams']:,} item streams, {stream_bytes:,} wire bytes; "
        f"{counts['raw']:,} raw byte streams; {counts['parser']:,} parser payloads)",
        f"* seconds: {seconds:.1f} ({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()})",
        f"* failures: **{n_failures}**",
        "",
        "Parser payloads accepted (the rest raised FrameError, the only exception allowed; every accepted",
        "payload packed back to the same bytes):",
        "",
        "| parser | inputs | accepted |",
        "| --- | ---: | ---: |",
        *[f"| `{n}` | {tried[n]:,} | {accepted[n]:,} |" for n in names],
    ]
    if failures:
        lines += ["", "## Failures (the first 20)", "", *[f"* {f}" for f in failures]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{total:,} inputs in {seconds:.1f} s, {n_failures} failures -> {args.out}")
    return 1 if n_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
