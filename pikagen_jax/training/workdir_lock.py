"""One training process per work directory: a lock file naming its holder.

    with WorkdirLock(workdir):            # raises WorkdirLockedError while another live run holds it
        run_training(...)

The lock is `<workdir>/lock`, created atomically (O_EXCL) with the holder's PID, host and process start time.
A second run on the same workdir refuses to start, naming the holder. A lock left by a killed process is stale —
same host, and that PID is gone or now belongs to another process (its start time differs) — and is taken
over with a warning. On another host the holder cannot be checked: the lock is respected, and the message says
how to remove it if that run is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from absl import logging

from pikagen_jax.errors import UserError

LOCK_FILE = "lock"


class WorkdirLockedError(UserError, RuntimeError):
    """Another live process is training in this work directory."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (Linux /proc), to tell a reused PID from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return start is None or _start_time(pid) in (None, start)


class WorkdirLock:
    """Holds `<workdir>/lock` from `acquire()` (or `with`) until `release()`."""

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK_FILE
        self.held = False

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
        return True

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed and creation retried (another process may win the race)
            if self._create():
                self.held = True
                return self
            try:
                holder = json.loads(self.path.read_text())
            except (OSError, ValueError):  # half-written by a process killed while creating it
                holder = {}
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.held = True  # this process already holds it (a second run_training in one process)
                return self
            same_host = holder.get("host") == socket.gethostname()
            if holder and (not same_host or _alive(int(holder["pid"]), holder.get("start"))):
                where = f"PID {holder['pid']} on host {holder['host']}"
                hint = ("stop that run first, or use another --workdir" if same_host else
                        f"if that run is gone, delete {self.path}")
                raise WorkdirLockedError(f"{self.path.parent} is in use by {where} (since {holder.get('since')}): "
                                         f"{hint}")
            logging.warning("taking over the stale lock of %s (PID %s on %s is gone)", self.path.parent,
                            holder.get("pid", "?"), holder.get("host", "?"))
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise WorkdirLockedError(f"could not lock {self.path.parent}: another process keeps taking it")

    def release(self) -> None:
        if not self.held:
            return
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
