"""The CLI pointed at a service that is not catenary says so once and exits 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(60)

SSH_BANNER = b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n"
HTTP_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _serve(listener: socket.socket, speaks_first: bool, stop: threading.Event) -> None:
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(1)
            try:
                if speaks_first:
                    conn.sendall(SSH_BANNER)
                else:
                    conn.recv(100)
                    conn.sendall(HTTP_ANSWER)
                conn.recv(1000)
            except OSError:
                pass


@pytest.fixture(params=["ssh", "http"])
def foreign(request: pytest.FixtureRequest) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(listener, request.param == "ssh", stop), daemon=True
    )
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_cli_says_once_that_the_address_is_not_a_catenary_node(foreign: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "catenary",
            "metadata",
            "get",
            "/a",
            "--address",
            foreign,
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "not a catenary node" in lines[0] and foreign in lines[0]


def test_several_addresses_none_of_them_a_node_exit_2(foreign: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "catenary",
            "metadata",
            "get",
            "/a",
            "--address",
            f"{foreign},{foreign}",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1 and "not a catenary node" in done.stderr
