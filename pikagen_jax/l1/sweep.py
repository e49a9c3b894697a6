r"""Grid search over configs/l1.py fields (seed 000 §3.6): one sub-workdir per combination, then a table.

    python -m pikagen_jax.l1.sweep --config=configs/l1.py --workdir=workdirs/sweep \
        --grid=optim.lr=1e-4,1e-5 --grid=model.encoder_heads=2,4 --set=train.num_epochs=20
    python -m pikagen_jax.l1.sweep --config=configs/l1.py --workdir=workdirs/seed_grid --seed_grid

`--grid=key=v1,v2,...` (repeatable) spans the grid; values are parsed like command-line overrides (commas
inside brackets stay in one value: `--grid=model.decoder_channels=(64,32),(32,16)`). `--set=key=value`
(repeatable) applies to every run. `--seed_grid` adds seed 000's 32-run grid (lr, weight decay, encoder
heads, FF width, encoder layers). Each run trains in `<workdir>/<key=value__...>/` and records its status
in `sweep_status.json` there. Re-running the same command resumes: finished runs are skipped, interrupted
runs resume from their checkpoints, failed runs are retried (`--noretry_failed` keeps them failed). A failed
run is recorded with its error and the sweep goes on. After every run `<workdir>/results.csv` and
`results.md` are rewritten: best validation L1, the final train / val / test L1 on the best checkpoint,
and the CLIP score (`n/a` without `--set=clip.checkpoint=...`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags, logging

STATUS_FILE = "sweep_status.json"
SEED_GRID = {  # seed 000, Figure 3.7
    "optim.lr": ["1e-4", "1e-5"],
    "optim.weight_decay": ["1e-5", "1e-6"],
    "model.encoder_heads": ["2", "4"],
    "model.encoder_ff_dim": ["512", "1024"],
    "model.encoder_layers": ["2", "3"],
}
METRIC_COLUMNS = ("best_val_l1", "best_epoch", "train_l1", "val_l1", "test_l1", "clip_score")


def split_values(text: str) -> list[str]:
    """'1e-4,1e-5' -> ['1e-4', '1e-5']; commas inside (), [] or {} do not split."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not value for value in values):
        raise ValueError(f"empty value in grid values {text!r}")
    return values


def parse_grid(entries: Sequence[str], seed_grid: bool = False) -> dict[str, list[str]]:
    """['optim.lr=1e-4,1e-5', ...] (+ seed 000's grid) -> {key: [values]} in the given order."""
    grid: dict[str, list[str]] = dict(SEED_GRID) if seed_grid else {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--grid={entry!r} must look like key=v1,v2 (e.g. optim.lr=1e-4,3e-4)")
        grid[key.strip()] = split_values(values)
    return grid


def run_name(overrides: Mapping[str, str]) -> str:
    """A folder name for one combination: 'optim.lr=1e-4__model.encoder_heads=2' (unsafe chars -> '-')."""
    if not overrides:
        return "base"
    return "__".join(re.sub(r"[^A-Za-z0-9._=+-]", "-", f"{k}={v}") for k, v in overrides.items())


@dataclasses.dataclass
class RunRecord:
    """One grid point: its overrides, status ('done' | 'failed' | 'pending') and results."""

    name: str
    overrides: dict[str, str]
    status: str = "pending"
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


def _read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(run_dir: Path, record: RunRecord, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"status": record.status, "overrides": record.overrides, "error": record.error,
               "seconds": record.seconds, **extra}
    (run_dir / STATUS_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def run_one(config_path: str, run_dir: Path, record: RunRecord, fixed: Sequence[str]) -> RunRecord:
    """Loads the config with the fixed + grid overrides and trains it; a failure is recorded, not raised."""
    from pikagen_jax.config_utils import load_config
    from pikagen_jax.l1.train import RESULTS_FILE, train_and_evaluate

    record.status, record.error = "running", ""
    _write_status(run_dir, record)
    started = time.perf_counter()
    try:
        config = load_config(config_path, list(fixed) + [f"{k}={v}" for k, v in record.overrides.items()])
        if config.system != "l1":
            raise ValueError(f"{config_path} is a {config.system!r} config; the sweep trains 'l1' configs")
        train_and_evaluate(config, run_dir)
        record.results = json.loads((run_dir / RESULTS_FILE).read_text())
        record.status = "done"
        trace = ""
    except Exception as error:  # noqa: BLE001  (any failure of one run is recorded; the sweep goes on)
        record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        trace = traceback.format_exc()
        logging.error("run %s failed: %s", record.name, record.error)
    record.seconds = time.perf_counter() - started
    _write_status(run_dir, record, traceback=trace)
    return record


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table_rows(records: Sequence[RunRecord], keys: Sequence[str]) -> list[dict[str, str]]:
    """One row per run: name, status, grid values, metrics ('n/a' when missing), error."""
    rows = []
    for record in records:
        results = record.results
        metrics = {"best_val_l1": results.get("best_val_l1"), "best_epoch": results.get("epoch"),
                   "train_l1": results.get("train_l1"), "val_l1": results.get("val_l1"),
                   "test_l1": results.get("test_l1"), "clip_score": results.get("test_clip_score")}
        row = {"run": record.name, "status": record.status, **{k: record.overrides.get(k, "") for k in keys}}
        row.update({name: _cell(metrics[name]) if record.status == "done" else "" for name in METRIC_COLUMNS})
        row["error"] = record.error.splitlines()[0][:200] if record.error else ""
        rows.append(row)
    return rows


def write_tables(workdir: Path, records: Sequence[RunRecord], keys: Sequence[str]) -> None:
    """Writes <workdir>/results.csv and results.md (atomically)."""
    rows = table_rows(records, keys)
    columns = ["run", "status", *keys, *METRIC_COLUMNS, "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    done = [r for r in records if r.status == "done" and r.results.get("best_val_l1") is not None]
    lines = [f"# L1 grid search ({len(done)}/{len(records)} runs done)", ""]
    if done:
        best = min(done, key=lambda r: r.results["best_val_l1"])
        lines += [f"Best by validation L1: `{best.name}` (val L1 {best.results['best_val_l1']:.4f}, "
                  f"test L1 {_cell(best.results.get('test_l1'))})", ""]
    header = [c for c in columns if c != "run"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in header) + " |")
    for name, text in (("results.csv", buffer.getvalue()), ("results.md", "\n".join(lines) + "\n")):
        tmp = workdir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(workdir / name)


def run_sweep(config_path: str, workdir: str | Path, grid: Mapping[str, Sequence[str]],
              fixed: Sequence[str] = (), retry_failed: bool = True) -> list[RunRecord]:
    """Trains every combination of `grid` (with the `fixed` overrides) in its own sub-workdir; resumable."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    records = [RunRecord(run_name(c), c) for c in combos]
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise ValueError(f"grid values give clashing run names: {sorted(n for n in names if names.count(n) > 1)}")
    for record in records:  # what earlier invocations already finished or failed
        status = _read_status(workdir / record.name)
        if status.get("status") in ("done", "failed"):
            record.status, record.error, record.seconds = status["status"], status["error"], status["seconds"]
            results_path = workdir / record.name / "results.json"
            if record.status == "done" and results_path.is_file():
                record.results = json.loads(results_path.read_text())
            elif record.status == "done":
                record.status = "pending"  # results lost: train (resume) again
    write_tables(workdir, records, keys)
    for index, record in enumerate(records):
        if record.status == "done" or (record.status == "failed" and not retry_failed):
            logging.info("[%d/%d] %s: %s, skipped", index + 1, len(records), record.name, record.status)
            continue
        logging.info("[%d/%d] %s: training", index + 1, len(records), record.name)
        run_one(config_path, workdir / record.name, record, fixed)
        write_tables(workdir, records, keys)
    failed = sum(r.status == "failed" for r in records)
    logging.info("sweep finished: %d done, %d failed; see %s", len(records) - failed, failed,
                 workdir / "results.md")
    return records


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so importing this module adds none)."""
    flags.DEFINE_string("config", "configs/l1.py", "L1 config file and optional preset, e.g. configs/l1.py:cpu.")
    flags.DEFINE_string("workdir", None, "Sweep directory: one sub-workdir per run, results.csv / .md.")
    flags.DEFINE_multi_string("grid", [], "key=v1,v2,...: a grid axis (repeatable).")
    flags.DEFINE_multi_string("set", [], "key=value: an override for every run (repeatable).")
    flags.DEFINE_bool("seed_grid", False, "Add seed 000's grid: lr, weight decay, heads, FF dim, layers.")
    flags.DEFINE_bool("retry_failed", True, "Retry runs that failed in an earlier invocation.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    if not args.workdir:
        raise app.UsageError("--workdir is required")
    grid = parse_grid(args.grid, args.seed_grid)
    if not grid:
        raise app.UsageError("no grid: give --grid=key=v1,v2 (repeatable) and/or --seed_grid")
    records = run_sweep(args.config, args.workdir, grid, args.set, args.retry_failed)
    print((Path(args.workdir) / "results.md").read_text())
    if all(r.status == "failed" for r in records):
        raise SystemExit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
