"""Passwords of serve-sql logins: SCRAM-SHA-256 (scramp), MD5 only when configured, and a per-address
backoff after failed logins.

A login's secret (`password: {env: NAME}` in `metadata/access/`) is a plain password or a PostgreSQL
SCRAM verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (what `ALTER ROLE ... PASSWORD`
stores), so the server need never hold the password itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import scramp

from medlake_assets.errors import MedlakeError

SCRAM = "scram-sha-256"
MD5 = "md5"
METHODS = (SCRAM, MD5)
SCRAM_ITERATIONS = 4096


class AuthFailed(MedlakeError):
    """Wrong user or password (the message never says which)."""

    sqlstate = "28P01"


@dataclass(frozen=True)
class Secret:
    """What the server keeps to check one login's password."""

    scram: tuple[bytes, bytes, bytes, int]  # salt, stored key, server key, iterations
    md5: str | None = None  # md5(password + user) hex, only from a plain password


def parse_scram_verifier(text: str) -> tuple[bytes, bytes, bytes, int] | None:
    """(salt, stored key, server key, iterations) of a PostgreSQL SCRAM-SHA-256 verifier, else None."""
    if not text.startswith("SCRAM-SHA-256$"):
        return None
    try:
        head, keys = text[len("SCRAM-SHA-256$") :].split("$", 1)
        iterations, salt = head.split(":", 1)
        stored, server = keys.split(":", 1)
        return base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server), int(iterations)
    except ValueError:
        return None


def make_secret(user: str, password: str) -> Secret:
    """A login's `Secret` from its configured value (a plain password or a SCRAM verifier)."""
    verifier = parse_scram_verifier(password)
    if verifier is not None:
        return Secret(scram=verifier)
    mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored, server, iterations = mechanism.make_auth_info(password, iteration_count=SCRAM_ITERATIONS)
    return Secret((salt, stored, server, iterations), hashlib.md5((password + user).encode()).hexdigest())


_THROWAWAY = Secret(
    scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(secrets.token_urlsafe(24), SCRAM_ITERATIONS)
)


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The PostgreSQL-format verifier of a password (for operators who keep verifiers, not passwords)."""
    salt, stored, server, count = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations
    )
    encode = base64.b64encode
    return (
        f"SCRAM-SHA-256${count}:{encode(salt).decode()}${encode(stored).decode()}:{encode(server).decode()}"
    )


class ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange (RFC 5802, RFC 7677), as PostgreSQL runs it.

    Written here rather than with scramp's server: libpq (psql, psqlODBC, psycopg) sends an empty user
    name in the client-first message (`n=,r=...`; PostgreSQL takes the user from the startup packet),
    which scramp 1.5's server refuses as malformed. scramp still derives the keys (`make_secret`). An
    unknown user runs the same exchange with a throwaway secret and fails only at the proof.
    """

    def __init__(self, lookup: Callable[[str], Secret | None], user: str):
        self.user = user
        secret = lookup(user)
        self.known = secret is not None
        self.salt, self.stored_key, self.server_key, self.iterations = (
            secret.scram if secret is not None else _THROWAWAY.scram
        )
        self.client_first_bare = ""
        self.server_first = ""
        self.nonce = ""

    def _fail(self) -> AuthFailed:
        return AuthFailed(f'password authentication failed for user "{self.user}"')

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode("utf-8", "replace")
        header, _, bare = text.partition(",")
        authzid, _, bare = bare.partition(",")
        # n: no channel binding; y: the client could bind but was not offered it (we offer none).
        if header not in ("n", "y") or authzid:
            raise self._fail()
        attributes = _attributes(bare)
        client_nonce = attributes.get("r", "")
        if not client_nonce or "m" in attributes:
            raise self._fail()
        self.client_first_bare = bare
        self.gs2_header = f"{header},{authzid},"
        self.nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.iterations}"
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        text = client_final.decode("utf-8", "replace")
        without_proof, _, proof_part = text.rpartition(",p=")
        attributes = _attributes(without_proof)
        binding = base64.b64encode(self.gs2_header.encode()).decode()
        if attributes.get("r") != self.nonce or attributes.get("c") != binding or not proof_part:
            raise self._fail()
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise self._fail() from None
        message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(self.stored_key, message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            raise self._fail()
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key) or not self.known:
            raise self._fail()
        verifier = hmac.new(self.server_key, message, hashlib.sha256).digest()
        return f"v={base64.b64encode(verifier).decode()}".encode()


def _attributes(text: str) -> dict[str, str]:
    return {part[0]: part[2:] for part in text.split(",") if len(part) >= 2 and part[1] == "="}


def check_md5(secret: Secret | None, user: str, salt: bytes, response: str) -> None:
    """`AuthFailed` unless `response` is md5(md5(password + user) + salt) for the login's password."""
    inner = secret.md5 if secret is not None and secret.md5 else hashlib.md5(salt).hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    if not hmac.compare_digest(expected.encode(), response.encode()) or secret is None or secret.md5 is None:
        raise AuthFailed(f'password authentication failed for user "{user}"')


class LoginBackoff:
    """Failed logins per client address: after `free_attempts`, each further failure doubles a wait
    (from `base_seconds` up to `max_seconds`) during which the address's logins are refused unchecked,
    so guessing is slowed to a few tries per hour. A success clears the address."""

    def __init__(
        self,
        free_attempts: int = 5,
        base_seconds: float = 1.0,
        max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ):
        self.free_attempts = free_attempts
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_left(self, address: str) -> float:
        """Seconds before `address` may try again (0: now)."""
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        return max(0.0, until - self.clock())

    def failed(self, address: str) -> float:
        """Record a failure; returns the wait now imposed on the address."""
        with self._lock:
            count, _ = self._failures.pop(address, (0, 0.0))
            count += 1
            wait = 0.0
            if count > self.free_attempts:
                wait = min(self.max_seconds, self.base_seconds * 2 ** (count - self.free_attempts - 1))
            self._failures[address] = (count, self.clock() + wait)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
            return wait

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
