"""Verify every checkpoint of a work directory and say which one a resume, `generate` or `evaluate` would use.

    python -m pikagen_jax.check_workdir --workdir=workdirs/gan64
    python -m pikagen_jax.check_workdir --workdir=workdirs/gan64 --quarantine     # also move damaged steps aside

Each step of `checkpoints/` (and `best/`, and every stage of a staged diffusion run) is checked against its
checksum manifest, or read in full where it has none. Damaged steps are reported with the reason; with
`--quarantine` they are renamed to `corrupt-<step>/` (never deleted), as a resume would do. Exit status 0 when
every folder has an intact step to restore, 1 when one has none, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pikagen_jax.errors import EXIT_USER_ERROR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a training work directory")
    p.add_argument("--quarantine", action="store_true", help="move damaged steps aside to corrupt-<step>/")
    return p.parse_args(argv)


def check_folder(folder: Path, quarantine: bool) -> tuple[list[str], int | None]:
    """Report lines for one checkpoint folder (checkpoints/ or best/) and the step that would restore."""
    from pikagen_jax.training import checkpoint_integrity as integrity
    from pikagen_jax.training.checkpointing import read_all_items, read_only_manager

    manager = read_only_manager(folder)
    lines, restorable = [], None
    for step in sorted(manager.all_steps(), reverse=True):
        step_dir = folder / str(step)
        reason = integrity.verify_step(step_dir, read_all_items(manager, step))
        checked = "checksums" if integrity.has_checksums(step_dir) else "read in full"
        if reason is None:
            restorable = step if restorable is None else restorable
            lines.append(f"  step {step}: intact ({checked})")
        elif quarantine:
            lines.append(f"  step {step}: DAMAGED — {reason}; moved aside to {integrity.quarantine(step_dir).name}/")
        else:
            lines.append(f"  step {step}: DAMAGED — {reason}")
    for corrupt in sorted(folder.glob(integrity.QUARANTINE_PREFIX + "*")):
        lines.append(f"  {corrupt.name}/: moved aside earlier")
    return lines, restorable


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pikagen_jax.run_sampler import checkpoint_dirs

    workdir = Path(args.workdir)
    runs = checkpoint_dirs(workdir)
    if not runs:
        print(f"error: no checkpoints in {workdir} (no checkpoints/ folder there or in its stage folders)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    status = 0
    for run in runs:
        for folder in [run / "checkpoints", run / "best"]:
            if not folder.is_dir():
                continue
            lines, restorable = check_folder(folder, args.quarantine)
            verdict = (f"would restore step {restorable}" if restorable is not None
                       else "NOTHING to restore: no intact step")
            print(f"{folder}: {verdict}")
            print("\n".join(lines) if lines else "  (no steps)")
            status = status or (1 if restorable is None else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
