"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A request carries ``webhook-id`` (the delivery's id, the same on every retry:
receivers deduplicate by it), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`` keyed with the secret's bytes. A secret is written
``whsec_<base64>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SECRET_PREFIX", "SignatureError", "generate_secret", "secret_key", "sign", "verify"]

SECRET_PREFIX = "whsec_"
#: How far a timestamp may be from now when verifying (s).
TOLERANCE = 300


class SignatureError(ValueError):
    """Raised when a request's signature or timestamp does not check out."""


def generate_secret() -> str:
    """A new random secret, ``whsec_`` and 32 bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; ValueError if it is not one."""
    if not isinstance(secret, str):
        raise TypeError(f"a webhook secret must be a str, not {type(secret).__name__}")
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret is 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> str:
    """Check a received request; return its ``webhook-id``. Raises `SignatureError`."""
    key = secret_key(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    given = lower.get("webhook-signature")
    if not msg_id or not stamp or not given:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE:
        raise SignatureError("webhook-timestamp is too far from now")
    expected = sign(key, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, part) for part in given.split(" ")):
        raise SignatureError("no signature matches")
    return msg_id
