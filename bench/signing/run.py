"""What signed updates cost on the device: instructions of the Ed25519 checks in QEMU on
mps2-an386 (Cortex-M4F, -icount shift=0, bench/harness), and the flash a signed build adds.

    .venv/bin/python bench/signing/run.py [--run RUN] [--out bench/results/signing.json]

Cases (firmware/runtime/signature.c, built -O2 like the firmware): the check of a signed blob of
the size of the digits CNN's (SHA-512 of the whole blob, then one Ed25519 verification), the same
for a 100-byte blob (the fixed part), and the check of an authorization (SHA-512 of a 32-byte
payload, one verification). --run compiles that run twice with --params blob, as a development
and as a signed build, and reports the flash of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "harness"))

import qemu_bench  # noqa: E402

from mcuprune.codegen.blob import pack_blob  # noqa: E402
from mcuprune.codegen.signing import authorization, generate_keys, load_signer, sign_blob  # noqa: E402
from mcuprune.resources import RUNTIME_DIR  # noqa: E402

ARCH = 0x5AFE0001


def _c_bytes(name: str, data: bytes) -> str:
    body = ",".join(str(b) for b in data)
    return f"static const uint8_t {name}[{len(data)}] __attribute__((aligned(4))) = {{{body}}};\n"


def bench_data(blobs: dict[str, bytes], auth: tuple[bytes, bytes]) -> str:
    out = ['#include "signature.h"\n', "static int32_t no_scratch(void) { return 0; }\n"]
    cases = []
    for name, blob in blobs.items():
        out.append(_c_bytes(f"data_{name}", blob))
        out.append(f"static void run_{name}(void *s) {{ (void)s; uint32_t c = 0; bench_output[0] = (int8_t)"
                   f"mcup_sig_check_blob(data_{name}, {len(blob)}u, 1u, &c); }}\n")
        cases.append(f'{{"{name}", run_{name}, no_scratch, 0, 0, 1}}')
    nonce_payload, sig = auth
    out.append(_c_bytes("auth_nonce", nonce_payload[:8]) + _c_bytes("auth_payload", nonce_payload[8:]))
    out.append(_c_bytes("auth_sig", sig))
    out.append("static void run_auth(void *s) { (void)s; bench_output[0] = (int8_t)mcup_sig_check_auth(auth_nonce, "
               "0x05, auth_payload, sizeof auth_payload, auth_sig); }\n")
    cases.append('{"authorization", run_auth, no_scratch, 0, 0, 1}')
    out.append("static const bench_case bench_cases[] = {" + ", ".join(cases) + "};\n")
    return "".join(out)


def measure(work: Path, blob_bytes: int) -> dict:
    from mcuprune.target.compile import _write_security

    generate_keys(work / "keys")
    signer = load_signer(work / "keys")
    rng = np.random.default_rng(0)
    blobs = {}
    for name, size in (("blob_large", blob_bytes), ("blob_small", 100)):
        body = rng.integers(-128, 128, max(1, size - 200)).astype(np.int8)
        blobs[name] = sign_blob(pack_blob([body], ARCH), signer)
    payload = bytes(range(32))
    nonce = bytes(8)
    auth = authorization(signer, nonce, ARCH, 0x05, payload)
    src = work / "src"
    src.mkdir()
    _write_security(src, signer)
    (src / "model.h").write_text(f"#define MCUP_ARCH_HASH 0x{ARCH:08x}u\n#define MCUP_INPUT_SIZE 1\n")
    target = qemu_bench.Target("cortex-m4", "dsp", "mps2-an386", qemu_bench.M4)
    elf = qemu_bench.build(work / "elf", target, bench_data(blobs, (nonce + payload, auth[8:])), [], 1, 4,
                           [RUNTIME_DIR / "signature.c", RUNTIME_DIR / "signature_sha512.c"], [src, RUNTIME_DIR])
    run = qemu_bench.run_qemu(elf, target.machine)
    ok = {name: checksum for name, (_, checksum) in run.cases.items()}
    zero = ok["authorization"]  # every case returns 0 (valid): the same one-byte checksum
    assert all(c == zero for c in ok.values()), ok
    return {"blob_sizes": {k: len(v) for k, v in blobs.items()},
            "instructions": {name: instr for name, (instr, _) in run.cases.items()},
            "calibration_error": run.calibration_error()}


def flash(run_dir: Path, work: Path) -> dict:
    from mcuprune.controller.drift_qsae import build_monitor_model
    from mcuprune.target.compile import compile_run

    sizes = {}
    for label, key in (("development", None), ("signed", work / "keys")):
        result = compile_run(run_dir, "mps2-an386", work / f"fw-{label}", params="blob",
                             monitor_builder=build_monitor_model, signing_key=key)
        sizes[label] = {"firmware_flash_bytes": result.build.flash_bytes, "ram_bytes": result.build.ram_bytes,
                        "blob_bytes": len(result.generated.blob)}
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a training run to compile as development and signed firmware")
    ap.add_argument("--blob-bytes", type=int, default=21264, help="size of the large signed blob (default: the "
                    "digits CNN's)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = measure(work, args.blob_bytes)
        if args.run:
            result["flash"] = flash(Path(args.run), work)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
