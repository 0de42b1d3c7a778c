"""Signed model blobs and authorised requests: the host half of docs/protocol.md, "Signed updates".

The owner's Ed25519 key pair lives in a key folder made by ``mcuprune keys generate --out DIR``:
``signing_key.pem`` (PKCS#8, owner-only, 0600: it never leaves the folder, is never printed or
logged), ``signing_key.pub`` (the raw 32-byte public key, hex) and ``security_counter`` (the counter
new blobs are signed with; raise it to lock older blobs out of every device that has seen a newer
one). Signing uses the `cryptography` package; the device verifies with Monocypher
(firmware/runtime/signature.c), whose message layouts this module mirrors:

* a signed blob has bit 0 of its header flags (bytes 22..24) set and ends with an 80-byte trailer,
  magic ``MCSG``, u32 security counter, key id (first 8 bytes of SHA-512 of the public key), and the
  signature over ``b"mcuprune blob v1" + blob[0:24] + SHA-512(blob[32:length - 64])``;
* an authorization is the device nonce (8 bytes, from INFO) and the signature over
  ``b"mcuprune auth v1" + nonce + u32 arch hash + u8 request type + SHA-512(payload)``, appended
  to the request's payload.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcuprune.codegen.blob import HEADER_BYTES, BlobError, parse_header
from mcuprune.errors import UserError

PRIVATE_KEY_FILE = "signing_key.pem"
PUBLIC_KEY_FILE = "signing_key.pub"
COUNTER_FILE = "security_counter"
FLAG_SIGNED = 1  # header flags (the format-1 "reserved" u16 at offset 22)
SIG_MAGIC = 0x4753434D  # b"MCSG"
TRAILER_BYTES = 80  # magic, counter, key id, signature
SIG_BYTES = 64
KEY_ID_BYTES = 8
NONCE_BYTES = 8
AUTH_BYTES = NONCE_BYTES + SIG_BYTES
BLOB_DOMAIN = b"mcuprune blob v1"
AUTH_DOMAIN = b"mcuprune auth v1"
MAX_COUNTER = 0xFFFFFFFF


def key_id(public_key: bytes) -> bytes:
    """The 8 bytes a blob and INFO name a key by: the start of SHA-512 of the raw public key."""
    return hashlib.sha512(public_key).digest()[:KEY_ID_BYTES]


@dataclass(frozen=True)
class Signer:
    """The owner's key, loaded for signing. `counter` is the security counter blobs get."""

    private: Ed25519PrivateKey
    public: bytes  # raw 32 bytes
    counter: int = 1

    @property
    def key_id(self) -> bytes:
        return key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:  # never the private key, not even by accident in a log
        return f"Signer(key_id={self.key_id.hex()}, counter={self.counter})"


def generate_keys(out: Path) -> dict:
    """Write a new key folder (module docstring); refuses to overwrite an existing private key."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory: choose another --out")
    if (out / PRIVATE_KEY_FILE).exists():
        raise UserError(f"{out / PRIVATE_KEY_FILE} exists: a key is never overwritten (choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Created owner-only (O_EXCL: no race with another writer, no pre-existing file's mode kept).
    fd = os.open(out / PRIVATE_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (out / PUBLIC_KEY_FILE).write_text(public.hex() + "\n")
    (out / COUNTER_FILE).write_text("1\n")
    return {"out": str(out), "key_id": key_id(public).hex(), "public_key": public.hex(), "security_counter": 1}


def _key_file(path: Path) -> Path:
    path = Path(path)
    return path / PRIVATE_KEY_FILE if path.is_dir() else path


def load_signer(path: Path, counter: int | None = None) -> Signer:
    """The key in a key folder (or its signing_key.pem); `counter` overrides the folder's counter."""
    key_path = _key_file(path)
    try:
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UserError(f"cannot load the signing key {key_path} ({reason}): create one with "
                        "`mcuprune keys generate --out DIR`") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise UserError(f"{key_path} is not an Ed25519 key: create one with `mcuprune keys generate --out DIR`")
    if key_path.stat().st_mode & 0o077:
        raise UserError(f"{key_path} is readable by others: `chmod 600 {key_path}` first")
    if counter is None:
        counter_path = key_path.parent / COUNTER_FILE
        try:
            counter = int(counter_path.read_text().strip()) if counter_path.exists() else 1
        except ValueError:
            raise UserError(f"{counter_path} does not hold a number") from None
    if not 0 <= counter <= MAX_COUNTER:
        raise UserError(f"security counter {counter} is outside 0..{MAX_COUNTER}")
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Signer(private, public, counter)


def load_public_key(path: Path) -> bytes:
    """The raw public key of a key folder (signing_key.pub), or derived from its private key."""
    path = Path(path)
    pub = (path if path.is_dir() else path.parent) / PUBLIC_KEY_FILE
    if pub.is_file():
        try:
            raw = bytes.fromhex(pub.read_text().strip())
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return raw
    return load_signer(path).public


@dataclass(frozen=True)
class BlobSignature:
    counter: int
    key_id: bytes
    signature: bytes


def signature_of(blob: bytes) -> BlobSignature | None:
    """The trailer of a signed blob (not verified), None for an unsigned one."""
    header = parse_header(blob)
    if not header.reserved & FLAG_SIGNED or len(blob) < HEADER_BYTES + TRAILER_BYTES:
        return None
    magic, counter = struct.unpack_from("<II", blob, len(blob) - TRAILER_BYTES)
    if magic != SIG_MAGIC:
        return None
    at = len(blob) - TRAILER_BYTES + 8
    return BlobSignature(counter, bytes(blob[at : at + KEY_ID_BYTES]), bytes(blob[-SIG_BYTES:]))


def _manifest(blob: bytes) -> bytes:
    return BLOB_DOMAIN + bytes(blob[:24]) + hashlib.sha512(bytes(blob[HEADER_BYTES : len(blob) - SIG_BYTES])).digest()


def unsigned_body(blob: bytes) -> bytes:
    """The table and arrays of a blob, without a signature trailer it may carry."""
    sig = signature_of(blob)
    return bytes(blob[HEADER_BYTES : len(blob) - TRAILER_BYTES if sig is not None else len(blob)])


def sign_blob(blob: bytes, signer: Signer, counter: int | None = None) -> bytes:
    """`blob` (signed or not) signed by `signer` with security counter `counter` (default the
    signer's). The blob id stays the one of the unsigned blob, so it names the parameters."""
    header = parse_header(blob)
    counter = signer.counter if counter is None else counter
    if not 0 <= counter <= MAX_COUNTER:
        raise UserError(f"security counter {counter} is outside 0..{MAX_COUNTER}")
    body = unsigned_body(blob)
    body += bytes(-len(body) % 4)  # the trailer is 4-aligned like the arrays
    length = HEADER_BYTES + len(body) + TRAILER_BYTES
    head = struct.pack("<IHHIIIHH", header.magic, header.format, header.header_bytes, header.arch_hash, length,
                       header.blob_id, header.n_arrays, (header.reserved | FLAG_SIGNED) & 0xFFFF)
    tail = struct.pack("<II", SIG_MAGIC, counter) + signer.key_id
    draft = head + bytes(8) + body + tail + bytes(SIG_BYTES)  # the CRCs and the signature are not signed
    signature = signer.sign(_manifest(draft))
    rest = body + tail + signature
    head += struct.pack("<I", zlib.crc32(rest))
    return head + struct.pack("<I", zlib.crc32(head)) + rest


def verify_blob(blob: bytes, public_key: bytes) -> bool:
    """What the device checks: a signature trailer naming this key, and the signature."""
    try:
        sig = signature_of(blob)
    except BlobError:
        return False
    if sig is None or sig.key_id != key_id(public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig.signature, _manifest(blob))
    except InvalidSignature:
        return False
    return True


def authorization(signer: Signer, nonce: bytes, arch_hash: int, msg_type: int, payload: bytes) -> bytes:
    """The 72 bytes appended to `payload` to authorise a request of `msg_type` for this nonce."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes, got {len(nonce)}")
    message = AUTH_DOMAIN + bytes(nonce) + struct.pack("<IB", arch_hash, msg_type) + hashlib.sha512(payload).digest()
    return bytes(nonce) + signer.sign(message)
