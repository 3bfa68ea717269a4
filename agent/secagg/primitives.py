"""The round's cryptographic building blocks, all from ``cryptography`` (no home-made primitives).

- X25519 key agreement, then HKDF-SHA256 with an ``info`` naming the purpose, the round and both
  parties: the same Diffie–Hellman secret never keys two different things.
- AES-256-GCM for shares travelling device → server → device, with associated data binding round,
  sender and recipient: the server can neither read a share nor re-address it undetected.
- Ed25519 signatures by the device's enrolment identity key over a canonical, length-prefixed
  encoding (no ambiguity between fields).
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL = b"edgefleet-secagg-v1"
KEY_BYTES = 32
SIG_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16


def encode(*fields: bytes | str | int) -> bytes:
    """Canonical length-prefixed concatenation: distinct field lists never give equal bytes."""
    parts = [PROTOCOL]
    for f in fields:
        if isinstance(f, int):
            b = f.to_bytes(8, "big", signed=False)
        elif isinstance(f, str):
            b = f.encode("utf-8")
        else:
            b = bytes(f)
        parts.append(len(b).to_bytes(4, "big"))
        parts.append(b)
    return b"".join(parts)


def digest(*fields: bytes | str | int, size: int = 32) -> bytes:
    return hashlib.sha256(encode(*fields)).digest()[:size]


def x25519_keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, public_bytes(sk)


def public_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def agree(sk: X25519PrivateKey, peer_public: bytes, *info: bytes | str | int) -> bytes:
    """32-byte key from X25519 + HKDF-SHA256; ``info`` says what it is for (purpose, round, parties).

    Raises ValueError for a malformed or low-order peer key (``cryptography`` refuses an all-zero
    shared secret), which callers turn into a refusal.
    """
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=encode(*info)).derive(shared)


def derive(secret: bytes, *info: bytes | str | int) -> bytes:
    """HKDF-SHA256 of a uniformly random secret (the self-mask seed) into a purpose-bound key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=encode(*info)).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a fresh random 96-bit nonce → (nonce, ciphertext‖tag)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    """Plaintext, or None when the tag fails (wrong key, altered bytes or different associated data)."""
    if len(nonce) != NONCE_BYTES:
        return None
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None


def sign(identity: Ed25519PrivateKey, message: bytes) -> bytes:
    return identity.sign(message)


def verify(identity_public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def identity_public_bytes(identity: Ed25519PrivateKey) -> bytes:
    return identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
