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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import scramp

SCRAM = "scram-sha-256"
MD5 = "md5"
METHODS = (SCRAM, MD5)
SCRAM_ITERATIONS = 4096


class AuthFailed(Exception):
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
    """The server side of one SCRAM-SHA-256 exchange; an unknown user fails like a wrong password."""

    def __init__(self, lookup: Callable[[str], Secret | None], user: str):
        self.user = user
        secret = lookup(user)
        self.known = secret is not None
        # An unknown user still runs the exchange with a throwaway secret, so it cannot be told apart.
        info = (
            secret.scram
            if secret is not None
            else make_secret(user, base64.b64encode(b"x" * 24).decode()).scram
        )
        self._server = scramp.ScramMechanism("SCRAM-SHA-256").make_server(lambda _name: info)

    def first(self, client_first: bytes) -> bytes:
        try:
            self._server.set_client_first(client_first.decode("utf-8"))
            return self._server.get_server_first().encode("utf-8")
        except scramp.ScramException as error:
            raise AuthFailed(f'password authentication failed for user "{self.user}"') from error

    def final(self, client_final: bytes) -> bytes:
        try:
            self._server.set_client_final(client_final.decode("utf-8"))
        except scramp.ScramException as error:
            raise AuthFailed(f'password authentication failed for user "{self.user}"') from error
        if not self.known:
            raise AuthFailed(f'password authentication failed for user "{self.user}"')
        return self._server.get_server_final().encode("utf-8")


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
