"""Encrypting stored secrets (pure, no Django): Fernet with a key derived from the server's secret.

Webhook signing secrets must be usable (to sign), so they cannot be hashed; they are encrypted
with AES-128-CBC + HMAC (Fernet, from ``cryptography``) under a key derived by HKDF-SHA256 from
``EDGEFLEET_SECRETS_KEY`` (default: Django's ``SECRET_KEY``). A leaked database alone does not
leak them; changing the source key makes stored secrets unreadable (re-enter them).
"""

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"edgefleet notify secrets v1"


def fernet(source_key: str) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"edgefleet", info=INFO).derive(source_key.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


def encrypt(source_key: str, plain: str) -> str:
    return fernet(source_key).encrypt(plain.encode()).decode() if plain else ""


def decrypt(source_key: str, token: str) -> str:
    """The plain text, or "" when there is none or it cannot be read (the key changed)."""
    if not token:
        return ""
    try:
        return fernet(source_key).decrypt(token.encode()).decode()
    except InvalidToken:
        return ""
