"""Signed blobs and authorised requests on the host (mcuprune/codegen/signing.py) and the device's
verifier (firmware/runtime/signature.c: Monocypher + SUPERCOP SHA-512) built for the host under
AddressSanitizer and UndefinedBehaviorSanitizer and fuzzed with random and mutated blobs and
signatures: it must agree with the `cryptography` package on every one (docs/protocol.md,
"Signed updates")."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from host_c import host_build

from mcuprune.codegen.blob import pack_blob, parse_blob, parse_header
from mcuprune.codegen.signing import (
    PRIVATE_KEY_FILE,
    SIG_BYTES,
    TRAILER_BYTES,
    _manifest,
    authorization,
    generate_keys,
    load_signer,
    sign_blob,
    signature_of,
    verify_blob,
)
from mcuprune.device.messages import ErrorCode
from mcuprune.errors import UserError
from mcuprune.resources import CRYPTO_SOURCES, RUNTIME_DIR, crypto_dir

C_DIR = Path(__file__).resolve().parent / "c"
FAKE_ARCH = 0xFA4E0001  # tests/c/fake_model/model.h


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder / "owner")
    generate_keys(folder / "other")
    return {"owner": load_signer(folder / "owner"), "other": load_signer(folder / "other"), "folder": folder}


def _blob(seed: int = 0, size: int = 700) -> bytes:
    rng = np.random.default_rng(seed)
    return pack_blob([rng.integers(-128, 128, size).astype(np.int8), rng.integers(-9, 9, 7).astype(np.int32)],
                     FAKE_ARCH)


def test_generated_key_is_owner_only_and_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcuprune.cli import main

    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--json"]) == 0
    out = capsys.readouterr()
    private = (tmp_path / "k" / PRIVATE_KEY_FILE).read_text()
    body = "".join(private.splitlines()[1:-1])
    assert stat.S_IMODE(os.stat(tmp_path / "k" / PRIVATE_KEY_FILE).st_mode) == 0o600
    assert body not in out.out + out.err and "PRIVATE" not in out.out + out.err
    doc = json.loads(out.out)
    assert doc["public_key"] == (tmp_path / "k" / "signing_key.pub").read_text().strip()
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 2  # never overwritten
    assert (tmp_path / "k" / PRIVATE_KEY_FILE).read_text() == private
    assert "Signer(key_id=" in repr(load_signer(tmp_path / "k")) and body not in repr(load_signer(tmp_path / "k"))
    os.chmod(tmp_path / "k" / PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        load_signer(tmp_path / "k")


def test_signed_blob_keeps_id_and_arrays_and_verifies_only_unchanged(keys: dict) -> None:
    owner, other = keys["owner"], keys["other"]
    blob = _blob()
    signed = sign_blob(blob, owner, counter=7)
    header, arrays = parse_blob(signed)  # both CRCs right, the arrays where they were
    assert header.blob_id == parse_header(blob).blob_id and header.reserved & 1
    assert arrays == parse_blob(blob)[1]
    sig = signature_of(signed)
    assert sig is not None and sig.counter == 7 and sig.key_id == owner.key_id
    assert len(signed) == len(blob) + (-len(blob) % 4) + TRAILER_BYTES
    assert verify_blob(signed, owner.public) and not verify_blob(signed, other.public)
    assert signature_of(blob) is None and not verify_blob(blob, owner.public)
    assert sign_blob(signed, owner, counter=7) == signed  # re-signing replaces the trailer
    assert verify_blob(sign_blob(signed, other), other.public)


@pytest.fixture(scope="module")
def harness(keys: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sig_harness with the owner's public key compiled in, as the compile stage writes it."""
    from mcuprune.target.compile import _write_security

    if any(not (crypto_dir() / name).is_file() for name in CRYPTO_SOURCES):
        pytest.fail(f"the verifier's sources are missing from {crypto_dir()}: run scripts/fetch_crypto.sh")
    src = tmp_path_factory.mktemp("sig-harness")
    _write_security(src, keys["owner"])
    sources = [C_DIR / "sig_harness.c", RUNTIME_DIR / "signature.c", RUNTIME_DIR / "signature_sha512.c"]
    return host_build(src / "sig_harness", sources, [src, C_DIR / "fake_model", RUNTIME_DIR])


def _expected(blob: bytes, public: bytes, owner_id: bytes) -> int:
    """What the device must answer, decided with the cryptography package."""
    flags = struct.unpack_from("<H", blob, 22)[0]
    magic = struct.unpack_from("<I", blob, len(blob) - TRAILER_BYTES)[0] if len(blob) >= 32 + TRAILER_BYTES else 0
    if not flags & 1 or len(blob) < 32 + TRAILER_BYTES or magic != 0x4753434D:
        return ErrorCode.UNSIGNED
    if blob[len(blob) - TRAILER_BYTES + 8 : len(blob) - TRAILER_BYTES + 16] != owner_id:
        return ErrorCode.WRONG_KEY
    # The signature over the manifest, whatever the CRCs say: the device checks those apart (blob.c),
    # so a blob whose only change is in its CRC fields still carries a valid signature here.
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(blob[-SIG_BYTES:], _manifest(blob))
        ok = True
    except InvalidSignature:
        ok = False
    return 0 if ok else ErrorCode.BAD_SIGNATURE


def test_device_verifier_agrees_with_cryptography_on_random_and_mutated_blobs(keys: dict, harness: Path) -> None:
    owner, other = keys["owner"], keys["other"]
    rng = np.random.default_rng(5)
    cases: list[bytes] = []
    for i in range(60):
        signed = sign_blob(_blob(i, int(rng.integers(40, 900))), owner, counter=int(rng.integers(0, 2**32)))
        cases.append(signed)
        for _ in range(6):  # a bit flipped anywhere: header, table, arrays, trailer, signature
            flipped = bytearray(signed)
            pos = int(rng.integers(0, len(signed)))
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
            cases.append(bytes(flipped))
        forged = bytearray(signed)
        forged[-SIG_BYTES:] = rng.integers(0, 256, SIG_BYTES, dtype=np.uint8).tobytes()  # a random signature
        cases.append(bytes(forged))
        big_s = bytearray(signed)  # s + L: the same point equation, but not canonical (malleability)
        s = int.from_bytes(signed[-32:], "little") + 2**252 + 27742317777372353535851937790883648493
        big_s[-32:] = (s % 2**256).to_bytes(32, "little")
        cases.append(bytes(big_s))
        cases.append(sign_blob(_blob(i), other))  # another key
        cases.append(_blob(i))  # unsigned
        cases.append(rng.integers(0, 256, int(rng.integers(32, 300)), dtype=np.uint8).tobytes())  # garbage
    wire = b"".join(bytes([0]) + struct.pack("<I", len(c)) + c for c in cases)
    proc = subprocess.run([str(harness)], input=wire, capture_output=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]  # ASan / UBSan
    results = np.frombuffer(proc.stdout, dtype="<i4").reshape(-1, 2)
    assert len(results) == len(cases)
    for i, (case, (rc, counter)) in enumerate(zip(cases, results, strict=True)):
        assert rc == _expected(case, owner.public, owner.key_id), f"case {i}"
        if rc == 0:
            assert int(counter) & 0xFFFFFFFF == struct.unpack_from("<I", case, len(case) - TRAILER_BYTES + 4)[0]
    codes = set(results[:, 0].tolist())
    assert {0, ErrorCode.UNSIGNED, ErrorCode.WRONG_KEY, ErrorCode.BAD_SIGNATURE} <= codes


def test_device_checks_authorizations_for_their_nonce_type_and_payload(keys: dict, harness: Path) -> None:
    owner, other = keys["owner"], keys["other"]
    rng = np.random.default_rng(6)
    cases, expected = [], []
    for _ in range(40):
        nonce = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        payload = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        auth = authorization(owner, nonce, FAKE_ARCH, 0x05, payload)
        sig = auth[8:]
        flipped = bytearray(sig)
        flipped[int(rng.integers(0, 64))] ^= 1 << int(rng.integers(0, 8))
        variants = [(nonce, 0x05, sig, payload, 0), (nonce, 0x08, sig, payload, -1),
                    (bytes([nonce[0] ^ 1]) + nonce[1:], 0x05, sig, payload, -1),
                    (nonce, 0x05, sig, payload + b"\x00", -1), (nonce, 0x05, bytes(flipped), payload, -1),
                    (nonce, 0x05, authorization(other, nonce, FAKE_ARCH, 0x05, payload)[8:], payload, -1),
                    (nonce, 0x05, authorization(owner, nonce, FAKE_ARCH ^ 1, 0x05, payload)[8:], payload, -1)]
        for n, t, s, p, e in variants:
            cases.append(bytes([1]) + struct.pack("<I", len(p)) + n + bytes([t]) + s + p)
            expected.append(e)
    proc = subprocess.run([str(harness)], input=b"".join(cases), capture_output=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    assert np.frombuffer(proc.stdout, dtype="<i4").tolist() == expected
