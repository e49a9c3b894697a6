r"""Quality per CPU-minute: GAN recipes trained for the same wall-clock budget, one after the other, then evaluated.

    python bench/quality_at_budget.py --minutes=60 --recipe=cpu=configs/gan.py:cpu \
        --recipe=cpu_projected=configs/gan.py:cpu_projected --out=workdirs/quality --benchmarks_md=BENCHMARKS.md

A recipe is `name=configs/<file>.py[:preset][,key=value...]` (config overrides after commas). Each is trained
by `launch.py` into `<out>/<name>` with `--config.train.max_minutes=<minutes>` (compile time included) on the
Kaggle sprites with seed 000's split at 64 px (`--dataset`, built by `python -m data_prep.build --source=kaggle
--source_dir=../shared/data/pokemon_kaggle --split_file=../shared/data/pokemon_kaggle/seed000_split.json`), then
its EMA generator is evaluated with the project's FID and KID (100 subsets; mean ± std):
- novel-class: the `test` split's 90 unseen species, 4 samples per caption;
- intra-class: seen species. Kaggle has one caption per species, so there are no held-out captions of training
  species; the intra-class set is the training species' own captions, one sample each, against their sprites.
Colour agreement, colour match, text influence and colour words followed (`pikagen_jax.metrics.alignment`) are
always computed; R-precision when a trained alignment encoder is given (`--alignment_workdir`). Writes
`<out>/results.json`, `<out>/<name>_grid.png` (the run's last fixed-prompt grid: top row real validation sprites,
below the EMA generator on their captions), and a Markdown table (printed; appended to `--benchmarks_md` with the
command line). A recipe already trained in `<out>/<name>` is only evaluated again (`--retrain` trains it afresh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown  # noqa: E402
from pikagen_jax.metrics.split_eval import format_kid  # noqa: E402

DEFAULT_RECIPES = ("cpu=configs/gan.py:cpu", "cpu_projected=configs/gan.py:cpu_projected")
DEFAULT_DATASET = "kaggle-splits_seed000_split"
INTRA_SPLIT = "train"


def parse_recipe(text: str) -> tuple[str, str, list[str]]:
    """'name=configs/gan.py:cpu,train.batch_size=8' -> ('name', 'configs/gan.py:cpu', ['train.batch_size=8'])."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ValueError(f"--recipe={text!r} must look like name=configs/gan.py:preset[,key=value...]")
    parts: list[str] = []
    for part in spec.split(","):  # a part without '=' continues the previous value (diffaugment=color,cutout)
        if parts and "=" not in part:
            parts[-1] += "," + part
        else:
            parts.append(part)
    config, *overrides = [part.strip() for part in parts]
    return name.strip(), config, overrides


def load_average() -> float:
    return os.getloadavg()[0]


def train(name: str, config: str, overrides: list[str], workdir: Path, minutes: float, dataset: str,
          data_dir: str) -> dict:
    """Runs launch.py for `minutes` of wall-clock time (compile included); returns steps and timing."""
    cmd = [sys.executable, "launch.py", f"--config={config}", f"--workdir={workdir}",
           f"--config.data.dataset={dataset}", f"--config.data.data_dir={data_dir}",
           f"--config.train.max_minutes={minutes}", "--config.train.num_steps=1000000",
           *(f"--config.{o}" for o in overrides)]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    started, load_before = time.perf_counter(), load_average()
    log = workdir.parent / f"{name}_train.log"
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"[{name}] training failed (exit {proc.returncode}); log: {log}")
    return {"train_seconds": seconds, "load_before": load_before, "load_after": load_average(), "log": str(log)}


def evaluate(workdir: Path, splits: list[str], alignment_workdir: str | None) -> dict:
    """FID / KID (and alignment metrics) of the run's latest EMA generator on the novel- and intra-class sets."""
    from pikagen_jax import evaluate as ev

    settings = ev.MetricSettings(kid_subsets=100, batch_size=50)
    extra = {"alignment_workdir": alignment_workdir} if alignment_workdir else {}
    results = {}
    for split in splits:
        report = ev.evaluate_run(workdir, splits=[split], samples_per_caption=4 if split == "test" else 1,
                                 settings=settings, write=False, **extra)
        results[split] = {key: report["results"][split][key] for key in report["results"][split]
                          if key in ("fid", "kid", "num_real", "num_generated", "alignment")}
        results["step"] = report["step"]
    return results


def markdown_rows(results: dict, splits: list[str]) -> list[str]:
    names = {"test": "novel-class (test)", INTRA_SPLIT: "intra-class (train species)"}
    header = "| recipe | config | steps in budget | s/step | " + " | ".join(
        f"{names[s]} KID ± std | {names[s]} FID" for s in splits)
    with_alignment = any("alignment" in r.get(s, {}) for r in results["recipes"].values() for s in splits)
    if with_alignment:
        header += (" | novel-class R-precision top-1 | colour agreement | colour match (another species') | "
                   "text influence | colour words followed (chance)")
    lines = [header + " |", "|---" * header.count("|") + "|"]
    for name, r in results["recipes"].items():
        cells = [name, f"`{r['config']}`" + (f" + `{','.join(r['overrides'])}`" if r["overrides"] else ""),
                 str(r["steps"]), f"{r['seconds_per_step']:.2f}"]
        for split in splits:
            kid = r[split]["kid"]
            cells += [format_kid(kid), f"{r[split]['fid']:.1f}"]
        if with_alignment:
            alignment = r["test"].get("alignment", {})
            top1 = alignment.get("r_precision_top1")
            colour = alignment.get("colour_agreement")
            cells += ["n/a" if top1 is None else f"{100 * top1:.1f} %", "n/a" if colour is None else f"{100 * colour:.1f} %"]
            match = alignment.get("colour_match")
            cells.append("n/a" if match is None else
                         f"{100 * match:.1f} % ({100 * alignment['colour_match_shuffled']:.1f} %)")
            influence = alignment.get("text_influence")
            cells.append("n/a" if influence is None else f"{influence:.3f}")
            words = alignment.get("colour_word_accuracy")
            cells.append("n/a" if words is None else
                         f"{100 * words:.1f} % ({100 * alignment['colour_word_chance']:.1f} %)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", default=[], help="name=configs/x.py[:preset][,key=value...]")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget per recipe")
    p.add_argument("--out", default="workdirs/quality", help="one run folder per recipe, results.json, grids")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="built dataset (seed 000's Kaggle split)")
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--splits", default=f"test,{INTRA_SPLIT}", help="evaluation splits (novel, intra)")
    p.add_argument("--alignment_workdir", help="trained alignment encoder (configs/alignment.py) for R-precision")
    p.add_argument("--retrain", action="store_true", help="train recipes again even if <out>/<name> exists")
    p.add_argument("--benchmarks_md", help="append the table and the command to this Markdown file")
    args = p.parse_args(argv)
    recipes = [parse_recipe(r) for r in (args.recipe or DEFAULT_RECIPES)]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"recipes": {}}
    results.update(minutes=args.minutes, dataset=args.dataset, command=" ".join(["python", *sys.argv]))
    for name, config, overrides in recipes:
        workdir = out / name
        if args.retrain and workdir.exists():
            shutil.rmtree(workdir)
        entry = results["recipes"].get(name, {}) if workdir.exists() else {}
        if not workdir.exists() or "train_seconds" not in entry:
            entry = train(name, config, overrides, workdir, args.minutes, args.dataset, args.data_dir)
        evaluation = evaluate(workdir, splits, args.alignment_workdir)
        steps = int(evaluation.pop("step"))
        entry.update(config=config, overrides=overrides, steps=steps,
                     seconds_per_step=entry["train_seconds"] / max(steps, 1), **evaluation)
        grids = sorted((workdir / "samples").glob("step_*.png"))
        if grids:
            shutil.copy(grids[-1], out / f"{name}_grid.png")
            entry["grid"] = str(out / f"{name}_grid.png")
        results["recipes"][name] = entry
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[{name}] {steps} steps; " + "; ".join(
            f"{s}: KID {format_kid(entry[s]['kid'])}, FID {entry[s]['fid']:.1f}"
            for s in splits), flush=True)
    table = "\n".join(markdown_rows(results, splits))
    print(table)
    if args.benchmarks_md:
        heading = f"Quality at budget ({time.strftime('%Y-%m-%d %H:%M')}, {args.minutes:g} min per recipe)"
        append_markdown(args.benchmarks_md, heading, results["command"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
