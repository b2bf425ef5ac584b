"""Servers a fault test owns, so that stopping or restarting them never disturbs the shared ones.

- `PrivatePostgres`: a PostgreSQL cluster of its own (initdb + pg_ctl on a free loopback port, data in a
  temporary folder), run as the `postgres` user when the tests run as root (PostgreSQL refuses root).
- `MotoServer`: moto's S3 server as a subprocess on its own port.
- `TcpProxy`: a loopback TCP forwarder. moto keeps its objects in memory, so stopping moto itself would
  lose the bucket; "the S3 endpoint stopped and restarted" is modelled by stopping the proxy in front of it
  (every open connection reset, new ones refused) and starting it again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medlake_dev.workers import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout), None if there is none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url` (any database of it); return the new one's URL."""
    url = make_url(server_url)
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<port>, trust auth for user `medlake`."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: that folder is private to root, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="medlake-fault-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "medlake", "--auth=trust", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://medlake@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def _options(self) -> str:
        # fsync off: a test cluster need not survive a power cut, and it keeps the 2-core machine quick.
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"

    def _pg_ctl(self, *args: str) -> None:
        # -l: the server's output goes to a log, never to our pipes (which would then never close).
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", log, "-w", *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated, then the server comes back."""
        self._pg_ctl("-m", "fast", "restart")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except OSError:
        return False
    return True


class MotoServer:
    """moto's S3 server (`moto_server`) as a subprocess on its own loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = Path(sys.executable).with_name("moto_server")
        self._log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + 60
        while not _answers(f"{self.url}/"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"moto_server did not start on {self.url}; see {log}")
            time.sleep(0.1)

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


class _Connection:
    """One forwarded connection: the client's socket and ours to the target, closed when both are done."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._open_directions = 2
        self._lock = threading.Lock()

    def direction_done(self) -> bool:
        """Count one direction finished; True when it was the last (the caller then closes both)."""
        with self._lock:
            self._open_directions -= 1
            return self._open_directions == 0

    def close(self, *, reset: bool = False) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                if reset:  # linger 0: close with a reset, as a crashed endpoint's host would
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>.

    `stop()` resets every open connection and closes the listening socket (new connections are refused);
    `start()` listens on the same port again. `connections_reset` counts the connections a stop cut.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections_reset = 0
        self.connections_accepted = 0
        self._open: set[_Connection] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        self._listener.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for connection in self._open:
                connection.close(reset=True)
            self.connections_reset += len(self._open)
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            connection = _Connection(client, upstream)
            with self._lock:
                self._open.add(connection)
                self.connections_accepted += 1
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(connection, source, target), daemon=True).start()

    def _pump(self, connection: _Connection, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            # One side failed: wake the other direction's pump so the pair is released.
            for sock in connection.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if connection.direction_done():
            with self._lock:
                if connection in self._open:
                    self._open.discard(connection)
                    connection.close()
