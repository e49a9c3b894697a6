"""Checkpoint integrity: a checksum manifest per saved step, verification, and moving damaged steps aside.

Orbax commits a step atomically, but it does not notice a step damaged later (a disk or copy fault): a
truncated array file fails deep inside TensorStore, and a flipped bit in a compressed chunk restores silently
wrong values. So after a step is committed, `write_checksums` records the SHA-256 and size of every file in it
(`checksums.json`), and `verify_step` checks them before the step is trusted (steps saved without a manifest are
checked by reading every array instead). A damaged step is never deleted: `quarantine` renames
`checkpoints/<step>/` to `checkpoints/corrupt-<step>/` (a name Orbax does not list as a step).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

MANIFEST = "checksums.json"
QUARANTINE_PREFIX = "corrupt-"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_checksums(step_dir: str | Path) -> Path:
    """Records size and SHA-256 of every file of a committed step in `<step_dir>/checksums.json` (atomic)."""
    step_dir = Path(step_dir)
    entries = {str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(step_dir)}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, step_dir / MANIFEST)
    return step_dir / MANIFEST


def has_checksums(step_dir: str | Path) -> bool:
    return (Path(step_dir) / MANIFEST).is_file()


def verify_step(step_dir: str | Path, read_all: Callable[[], object] | None = None) -> str | None:
    """None if the step is intact, else the reason it is not.

    With a checksum manifest every listed file must exist with its size and hash; without one (older steps, or
    a crash between commit and manifest) `read_all()` must read every item without error."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return f"{step_dir} does not exist"
    manifest = step_dir / MANIFEST
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError) as error:
            return f"its checksum manifest is unreadable ({error})"
        for name, entry in entries.items():
            path = step_dir / name
            if not path.is_file():
                return f"file {name} is missing"
            if path.stat().st_size != entry["size"]:
                return f"file {name} has {path.stat().st_size} bytes, {entry['size']} were written"
            if _sha256(path) != entry["sha256"]:
                return f"file {name} changed since it was written (SHA-256 mismatch)"
        return None
    if read_all is None:
        return None
    try:
        read_all()
    except Exception as error:  # noqa: BLE001  (any read failure means the step cannot be restored)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"it cannot be read ({type(error).__name__}: {first[:200]})"
    return None


def quarantine(step_dir: str | Path) -> Path:
    """Renames a damaged step folder to `corrupt-<step>[-n]` beside it (never deletes); returns the new path."""
    step_dir = Path(step_dir)
    target = step_dir.with_name(QUARANTINE_PREFIX + step_dir.name)
    n = 1
    while target.exists():
        n += 1
        target = step_dir.with_name(f"{QUARANTINE_PREFIX}{step_dir.name}-{n}")
    os.replace(step_dir, target)
    return target
