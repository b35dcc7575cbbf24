"""One deadline over a whole http download: a loopback server that trickles its header bytes (each read
well within the read timeout) is cut at the download's deadline, as a slow body is. Its body is empty, so
no check made while reading a body can catch it: only a deadline over the headers does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vlmbatch.media.http import HttpImages, HttpOptions
from vlmbatch.schema.contracts.errors import StorageTransient

# The server trickles this many header bytes, one per TRICKLE_SECONDS, then ends its headers: a client
# without an overall deadline gets the (empty) answer after TRICKLED * TRICKLE_SECONDS.
TRICKLED = 40
TRICKLE_SECONDS = 0.1


def _trickle(connection: socket.socket) -> None:
    with connection, contextlib.suppress(OSError):
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(TRICKLED):
            time.sleep(TRICKLE_SECONDS)
            connection.sendall(b"a")
        connection.sendall(b"\r\nContent-Type: image/jpeg\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture
def trickling_server() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                threading.Thread(target=_trickle, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow-headers.jpg"
    stop.set()
    listener.close()


def test_trickled_headers_are_cut_at_the_whole_download_deadline(trickling_server: str) -> None:
    images = HttpImages(
        HttpOptions(total_timeout=0.5, read_timeout=5.0, attempts=1, allow_private=True, backoff_seconds=0.01)
    )
    with pytest.raises(StorageTransient, match=r"took over 0\.5 s"):
        images.fetch(trickling_server, max_bytes=1 << 20)


def test_the_same_server_answers_a_client_with_time_enough(trickling_server: str) -> None:
    images = HttpImages(HttpOptions(total_timeout=60.0, read_timeout=5.0, attempts=1, allow_private=True))
    assert images.fetch(trickling_server, max_bytes=1 << 20) == b""
