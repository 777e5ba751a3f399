"""Password hashing with scrypt, a memory-hard KDF from the standard library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["DUMMY_HASH", "NO_PASSWORD", "hash_password", "verify_password"]

# 16 MiB and ~50 ms per hash: OWASP's minimum for scrypt is N=2**17 with r=8 at 128 MiB;
# N=2**14 keeps logins cheap for test suites that open many sessions. Raise it in production
# through a re-hash on login if the threat model needs it.
_N, _R, _P = 2**14, 8, 1


# Stored for a user who cannot log in with a password (sessions are opened for them by the
# host app, or by tests): it matches no scrypt hash.
NO_PASSWORD = "!"


def hash_password(password: str) -> str:
    """Return a self-describing scrypt hash of ``password``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """Tell whether ``password`` matches ``encoded``, in constant time."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# Checked against when the user does not exist, so both failures take the same time.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
