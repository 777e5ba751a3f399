"""Password hashing with scrypt, a memory-hard KDF from the standard library."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

__all__ = [
    "DEFAULT_COST",
    "NO_PASSWORD",
    "dummy_hash",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

# scrypt's N. OWASP's minimum is N=2**17 with r=8, p=1: 128 MiB and about 0.3 s per hash.
# Settings.password_cost sets it; test suites that open many sessions lower it. A hash says
# its own cost, so hashes made at another cost still verify (and are re-hashed at login).
DEFAULT_COST = 2**17
_R, _P = 8, 1

# Stored for a user who cannot log in with a password (sessions are opened for them by the
# host app, or by tests): it matches no scrypt hash.
NO_PASSWORD = "!"


def hash_password(password: str, *, cost: int = DEFAULT_COST) -> str:
    """Return a self-describing scrypt hash of ``password`` at ``cost`` (scrypt's N)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, cost, _R, _P, 32)
    return "$".join(["scrypt", str(cost), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """Tell whether ``password`` matches ``encoded``, in constant time."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(
            password.encode(), base64.b64decode(salt), int(n), int(r), int(p), len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(encoded: str, cost: int) -> bool:
    """Tell whether a stored hash was made at a cost other than ``cost``."""
    parts = encoded.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and parts[1] != str(cost)


@functools.lru_cache(maxsize=4)
def dummy_hash(cost: int) -> str:
    """Return a hash checked against when the user does not exist, so both failures cost
    the same."""
    return hash_password(secrets.token_urlsafe(16), cost=cost)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # scrypt needs 128 * r * n bytes; hashlib refuses more than 32 MiB unless told.
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n + 2**20
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
