"""Localhost helpers for the tests that start servers (the demo, TensorBoard) or coordinators (jax.distributed)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Waits until something accepts connections on 127.0.0.1:`port`; False on timeout or when `process` (the
    server, if given) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.3)
    return False
