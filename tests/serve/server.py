"""uvicorn serving an app from a thread of the test process, on a port the kernel picks."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def loopback_socket() -> socket.socket:
    """127.0.0.1, port 0, handed to uvicorn: no pick-then-bind race with other tests.

    `IPPROTO_TCP` matters: asyncio sets TCP_NODELAY on accepted connections only for sockets whose
    proto says TCP; with proto 0 every keep-alive response waits ~40 ms (Nagle + delayed ACK).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


class ThreadServer:
    """`with ThreadServer(app) as url:` serves `app` until the block ends, then stops it and joins."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = loopback_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120  # the lifespan loads the model
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn stopped during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"
