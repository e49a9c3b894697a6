r"""Side-by-side benchmark of our jitted train steps against faithful PyTorch references (bench/torch_reference).

    python bench/bench_vs_torch.py                       # GAN 64/128 px × batch 64/16, L1 215 px batch 10
    python bench/bench_vs_torch.py --quick --profile     # GAN 64 px batch 16 + L1, 3 steps; profile our GAN step
    python bench/bench_vs_torch.py --gan_cases=64x16,128x16:2 --models=gan   # chosen cases (':2' = 2 timed steps)
    python bench/bench_vs_torch.py --report=workdirs/bench_vs_torch.json     # the tables of an earlier run

Per case, one JAX and one PyTorch worker process run side by side (each framework in its own process, so
peak resident memory is separable) and take turns step by step, so both see the same machine load. Both
are pinned to the same `--threads` CPUs: `torch.set_num_threads(k)` and, for XLA:CPU, the process's CPU
affinity (jaxlib 0.10.2 sizes its intra-op pool from it; `intra_op_parallelism_threads` is not an XLA flag).
Measured: train-step throughput (median of `--steps` steps after `--warmup`), our trace + compile time and
PyTorch's first step, peak RSS, XLA's FLOP count per step as a fraction of the measured matmul peak
(2048² float32, best of 5), and for the GAN generation throughput at batch 64 and single-prompt latency
(EMA generator). Writes `--out` (JSON, after every case) and prints Markdown tables. A case whose
compiled step needs more than `--max_memory_fraction` of physical RAM (XLA's memory analysis) is skipped.

Both sides do the same work in float32 on random batches: our `make_train_step`s with configs/gan.py
(seed-002 widths, text encoder BERT-mini with random init, partial fine-tuning by default) and configs/l1.py
(seed 001's final model with BERT-mini), against bench/torch_reference's modules and steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GAN_TEXT_LENGTH = 64  # configs/gan.py text.max_length
L1_TEXT_LENGTH = 96  # configs/l1.py text.max_length
L1_BERT_DROPOUT = 0.3  # configs/l1.py model.bert_dropout (seed 001: dropout 0.3 everywhere)


def make_inputs(batch: int, image_size: int, length: int, seed: int = 0):
    """Random NHWC images in [-1, 1], WordPiece-range ids and masks of 8..length real tokens (numpy)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32)
    ids = rng.integers(1000, 20000, (batch, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.integers(8, length, (batch, 1))).astype(np.int32)
    return images, ids, mask


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- JAX workers


class JaxRunner:
    """Our state + `make_train_step` of one system, run through the step's compiled executable."""

    def __init__(self, case: dict):
        from flax import nnx

        from pikagen_jax.config_utils import load_config
        from pikagen_jax.training.mesh import make_mesh, replicate_nodes, shard_batch
        self.case, self.nnx, self.step = case, nnx, 0
        self.config = load_config(f"configs/{case['model']}.py", case["overrides"])
        mesh = make_mesh()
        self.state = self.make_state(nnx.Rngs(0))
        replicate_nodes(mesh, self.state)
        self.step_fn = self.make_step(mesh)
        images, ids, mask = make_inputs(case["batch"], case["image_size"], case["text_length"])
        self.batch = shard_batch({"image": images, "token_ids": ids, "attention_mask": mask}, mesh)

    def step_args(self) -> tuple:
        import numpy as np
        return (np.asarray(self.step, np.int32),)

    def setup(self) -> dict:
        start = time.perf_counter()
        lowered = self.step_fn.jitted.lower(self.nnx.state(self.state), self.batch, *self.step_args())
        trace_s = time.perf_counter() - start
        self.compiled = lowered.compile()
        return {"trace_s": trace_s, "compile_s": time.perf_counter() - start - trace_s,
                "flops_per_step": xla_flops(self.compiled), "matmul_gflops": jax_matmul_gflops(),
                "xla_memory_bytes": xla_memory_bytes(self.compiled)}

    def train(self) -> None:
        import jax
        self.step += 1
        variables, metrics = self.compiled(self.nnx.state(self.state), self.batch, *self.step_args())
        self.nnx.update(self.state, variables)
        jax.block_until_ready((variables, metrics))


class JaxGan(JaxRunner):
    """pikagen_jax.gan: GanState + make_train_step (D step with MA-GP, G + text step, EMA, NaN guard)."""

    def make_state(self, rngs):
        from pikagen_jax.gan.sampling import make_sampler
        from pikagen_jax.gan.state import GanState
        state = GanState(self.config, rngs=rngs)
        self.sampler = make_sampler(state.text_encoder, state.ema_generator)
        return state

    def make_step(self, mesh):
        from pikagen_jax.gan.steps import make_train_step
        return make_train_step(self.state, self.config, mesh)

    def generate(self, count: int) -> None:
        import jax

        from pikagen_jax.training.samples import noise
        _, ids, mask = make_inputs(count, 8, self.case["text_length"], seed=count)
        jax.block_until_ready(self.sampler(ids, mask, noise(count, count, self.config.model.z_dim)))

    def profile(self) -> dict:
        return profile_gan_step(self)


class JaxL1(JaxRunner):
    """pikagen_jax.l1: L1State + make_train_step (L1 loss, Adam + coupled weight decay, NaN guard)."""

    def make_state(self, rngs):
        from pikagen_jax.l1.state import L1State
        return L1State(self.config, rngs=rngs)

    def make_step(self, mesh):
        from pikagen_jax.l1.steps import make_train_step
        return make_train_step(self.state, self.config, mesh)


def xla_memory_bytes(compiled) -> float:
    """Arguments + outputs + temporaries of the compiled step, from XLA's memory analysis (NaN if unknown)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return float("nan")
    return float(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                 - analysis.alias_size_in_bytes)


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def jax_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import jax
    a = jax.random.normal(jax.random.key(0), (n, n))
    dot = jax.jit(jax.numpy.dot)
    dot(a, a).block_until_ready()
    return 2 * n**3 / min(timed(lambda: dot(a, a).block_until_ready()) for _ in range(repeats)) / 1e9


# --------------------------------------------------------------------------------------- PyTorch workers


def torch_inputs(images, ids, mask):
    """numpy NHWC images, ids, mask -> torch NCHW images, int64 ids and mask."""
    import torch
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ids).long(),
            torch.from_numpy(mask).long())


def torch_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch
    a = torch.randn(n, n)
    a @ a
    return 2 * n**3 / min(timed(lambda: a @ a) for _ in range(repeats)) / 1e9


class TorchGan:
    def __init__(self, case: dict):
        import torch

        from bench.torch_reference import gan as tgan
        torch.manual_seed(0)
        size, self.length = case["image_size"], case["text_length"]
        text = tgan.TorchTextEncoder(tgan.bert_mini_config(), finetune=case["finetune"])
        self.trainer = tgan.TorchGanTrainer(text, tgan.TorchGenerator(size), tgan.TorchDiscriminator(size),
                                            d_pass=case.get("torch_d_pass", "shared"))
        self.inputs = torch_inputs(*make_inputs(case["batch"], size, self.length))

    def setup(self) -> dict:
        return {"matmul_gflops": torch_matmul_gflops()}

    def train(self) -> None:
        self.trainer.step(*self.inputs)

    def generate(self, count: int) -> None:
        import torch
        _, ids, mask = torch_inputs(*make_inputs(count, 8, self.length, seed=count))
        self.trainer.sample(ids, mask, torch.randn(count, self.trainer.gen.z_dim))


class TorchL1:
    def __init__(self, case: dict):
        import torch

        from bench.torch_reference.l1 import TorchL1Model, TorchL1Trainer
        torch.manual_seed(0)
        self.trainer = TorchL1Trainer(TorchL1Model(image_size=case["image_size"], bert_dropout=L1_BERT_DROPOUT))
        images, ids, mask = torch_inputs(*make_inputs(case["batch"], case["image_size"], case["text_length"]))
        self.inputs = (ids, mask, images)

    def setup(self) -> dict:
        return {"matmul_gflops": torch_matmul_gflops()}

    def train(self) -> None:
        self.trainer.step(*self.inputs)


RUNNERS = {("jax", "gan"): JaxGan, ("jax", "l1"): JaxL1, ("torch", "gan"): TorchGan, ("torch", "l1"): TorchL1}


def worker_main(framework: str, case: dict, threads: int) -> None:
    """Serves one JSON command per stdin line with one JSON reply per line (library output goes to stderr)."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])  # before jax/torch size their pools
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen={str(threads > 1).lower()}").strip()
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path.insert(0, str(REPO))
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    runner = RUNNERS[framework, case["model"]](case)

    def report() -> dict:
        threads_used = ({"torch_threads": sys.modules["torch"].get_num_threads()} if framework == "torch"
                        else {"xla_flags": os.environ["XLA_FLAGS"]})
        return {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # KiB on Linux
                "affinity": sorted(os.sched_getaffinity(0)), **threads_used,
                "other_framework_imported": ("torch" if framework == "jax" else "jax") in sys.modules}

    commands = {"setup": runner.setup, "train": lambda: {"seconds": timed(runner.train)},
                "generate": lambda count: {"seconds": timed(lambda: runner.generate(count))},
                "profile": lambda: runner.profile(), "report": report}
    for line in sys.stdin:
        message = json.loads(line)
        command = message.pop("cmd")
        if command == "quit":
            break
        try:
            reply = commands[command](**message)
        except Exception as error:  # the orchestrator raises it, with this worker's log
            import traceback
            traceback.print_exc()
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# ------------------------------------------------------------------------------------------ orchestrator


class Worker:
    """A worker subprocess; `call(cmd, **kw)` sends a command and returns its JSON reply."""

    def __init__(self, framework: str, case: dict, threads: int):
        self.framework = framework
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench_{framework}_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", framework, "--case", json.dumps(case), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO)

    def call(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line else {"error": f"worker exited with code {self.proc.wait()}"}
        if "error" in reply:
            self.log.seek(0)
            raise RuntimeError(f"{self.framework} worker failed on {cmd!r}: {reply['error']}\n"
                               f"{self.log.read()[-3000:]}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        os.unlink(self.log.name)


def run_case(case: dict, args, profile: bool) -> dict:
    """Both frameworks on one case, taking turns step by step; returns the measurements of each."""
    print(f"== {case['name']}", file=sys.stderr, flush=True)
    workers = {"jax": Worker("jax", case, args.threads)}
    out: dict = {"case": case, "jax": {}, "torch": {}}
    steps = case.get("steps") or args.steps
    try:
        out["jax"].update(workers["jax"].call("setup"))
        needed, limit = out["jax"]["xla_memory_bytes"], args.max_memory_fraction * physical_memory_bytes()
        if needed > limit:  # XLA's own count for our step; the PyTorch reference is not run either
            out["skipped"] = (f"our compiled step needs {needed / 2**30:.1f} GiB (XLA memory analysis), more than "
                              f"{args.max_memory_fraction:.0%} of this machine's {physical_memory_bytes() / 2**30:.1f} GiB")
            print(f"   skipped: {out['skipped']}", file=sys.stderr, flush=True)
            return out
        workers["torch"] = Worker("torch", case, args.threads)
        out["torch"].update(workers["torch"].call("setup"))
        for fw, worker in workers.items():
            out[fw]["first_step_s"] = worker.call("train")["seconds"]
        for _ in range(args.warmup - 1):
            for worker in workers.values():
                worker.call("train")
        for fw in workers:
            out[fw]["step_s"] = []
        for i in range(steps):  # alternate who goes first, so neither always follows the other
            for fw in (("jax", "torch") if i % 2 == 0 else ("torch", "jax")):
                out[fw]["step_s"].append(workers[fw].call("train")["seconds"])
                print(f"   step {i} {fw}: {out[fw]['step_s'][-1]:.2f} s", file=sys.stderr, flush=True)
        for fw in workers:
            out[fw]["step_s_median"] = statistics.median(out[fw]["step_s"])
            out[fw]["images_per_s"] = case["batch"] / out[fw]["step_s_median"]
        if case["model"] == "gan":
            for count, key in ((args.gen_batch, "generate_batch_s"), (1, "generate_single_s")):
                times = {fw: [] for fw in workers}
                for rep in range(args.gen_reps + 1):  # the first call compiles / warms up
                    for fw, worker in workers.items():
                        times[fw].append(worker.call("generate", count=count)["seconds"])
                for fw in workers:
                    out[fw][key], out[fw][key + "_all"] = statistics.median(times[fw][1:]), times[fw][1:]
            if profile:
                out["profile"] = workers["jax"].call("profile")
        for fw, worker in workers.items():
            out[fw].update(worker.call("report"))
    finally:
        for worker in workers.values():
            worker.close()
    return out


def parse_gan_cases(text: str) -> list[tuple[int, int, int | None]]:
    """'64x64,128x16:3' -> [(64, 64, None), (128, 16, 3)]: image size x batch, optional ':timed steps'."""
    cases = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)x(\d+)(?::(\d+))?", item)
        if not match:
            raise SystemExit(f"--gan_cases item {item!r} is not SIZExBATCH[:STEPS], e.g. 64x16 or 128x16:3")
        size, batch, steps = match.groups()
        cases.append((int(size), int(batch), int(steps) if steps else None))
    return cases


def cases_for(args) -> list[dict]:
    """The benchmark cases, with the config overrides that give our side the PyTorch reference's shapes."""
    cases = []
    for size, batch, steps in parse_gan_cases("64x16" if args.quick else args.gan_cases):
        cases.append({"model": "gan", "image_size": size, "batch": batch, "finetune": args.text_finetune,
                      "steps": steps, "torch_d_pass": getattr(args, "torch_d_pass", "shared"),
                      "text_length": GAN_TEXT_LENGTH, "name": f"GAN {size} px", "overrides": [
                          f"data.image_size={size}", f"train.batch_size={batch}", "text.checkpoint=bert_mini",
                          f"text.finetune={args.text_finetune}", f"text.max_length={GAN_TEXT_LENGTH}"]})
    cases.append({"model": "l1", "image_size": 215, "batch": 10, "text_length": L1_TEXT_LENGTH, "name": "L1 215 px",
                  "overrides": ["data.image_size=215", "train.batch_size=10", "model.bert_checkpoint=bert_mini",
                                f"model.bert_dropout={L1_BERT_DROPOUT}", f"text.max_length={L1_TEXT_LENGTH}"]})
    return [case for case in cases if case["model"] in args.models.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="GAN 64 px batch 16 only; 3 steps, 1 warm-up")
    parser.add_argument("--gan_cases", default="64x64,64x16,128x64,128x16",
                        help="GAN cases SIZExBATCH[:STEPS], comma-separated (STEPS overrides --steps for that case)")
    parser.add_argument("--max_memory_fraction", type=float, default=0.9,
                        help="skip a case whose compiled step needs more than this fraction of physical RAM")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--models", default="gan,l1", help="comma list: gan, l1")
    parser.add_argument("--text_finetune", default="partial", choices=("none", "partial", "full"))
    parser.add_argument("--torch_d_pass", default="shared", choices=("shared", "separate"),
                        help="how the PyTorch GAN computes L_D: 'shared' (DF-GAN's way, as ours: D's trunk on the real "
                             "and fake batch once each, MA-GP from the real pass) or 'separate' (3B pass + MA-GP's own)")
    parser.add_argument("--gen_batch", type=int, default=64)
    parser.add_argument("--gen_reps", type=int, default=None, help="timed generation calls (default 5, quick 3)")
    parser.add_argument("--profile", action="store_true", help="also profile our step in the first GAN case")
    parser.add_argument("--out", default="workdirs/bench_vs_torch.json", help="JSON results (workdirs/ is git-ignored)")
    parser.add_argument("--report", metavar="JSON", help="only print the Markdown tables of an earlier --out file")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker, json.loads(args.case), args.threads)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return
    args.steps = args.steps or (3 if args.quick else 10)
    args.warmup = max(1, args.warmup or (1 if args.quick else 2))
    args.gen_reps = args.gen_reps or (3 if args.quick else 5)
    available = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= available:
        raise SystemExit(f"--threads must be in [1, {available}] (CPUs this process may use), got {args.threads}")
    if not cases_for(args):
        raise SystemExit(f"--models={args.models!r} selects nothing; use gan, l1 or gan,l1")

    start, load_before = time.time(), os.getloadavg()
    cases = cases_for(args)
    first_gan = next((i for i, c in enumerate(cases) if c["model"] == "gan"), None)
    results: list[dict] = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        results.append(run_case(case, args, profile=args.profile and i == first_gan))
        report = {  # rewritten after every case, so an interrupted run keeps what it measured
            "command": "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
            "machine": {"os_cpu_count": os.cpu_count(), "threads": args.threads, "load_before": load_before,
                        "load_after": os.getloadavg(), "wall_s": time.time() - start, "gen_batch": args.gen_batch,
                        "versions": {name: version(name)
                                     for name in ("jax", "jaxlib", "flax", "torch", "transformers")}},
            "cases": results, "complete": i == len(cases) - 1,
        }
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))


# ---------------------------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    m, v = report["machine"], report["machine"]["versions"]
    ran = [c for c in report["cases"] if "skipped" not in c]
    peak = max((max(c["jax"]["matmul_gflops"], c["torch"]["matmul_gflops"]) for c in ran), default=float("nan"))
    lines = [f"Command: `{report['command']}`", "",
             f"os.cpu_count() = {m['os_cpu_count']}; both frameworks pinned to {m['threads']} CPUs "
             f"(torch.set_num_threads({m['threads']}); XLA:CPU via CPU affinity); load average "
             f"{m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after; float32; jax {v['jax']}, "
             f"flax {v['flax']}, torch {v['torch']}, transformers {v['transformers']}. Matmul peak "
             f"(2048² float32, best of 5, best of both frameworks): {peak:.0f} GFLOP/s.", "",
             "| model | batch | steps | ours img/s | PyTorch img/s | ours/PyTorch | ours trace + compile | "
             "PyTorch 1st step | peak RSS ours / PyTorch | GFLOP/step (XLA) | ours GFLOP/s (% peak) | "
             "PyTorch GFLOP/s (% peak) |", "|" + "---|" * 12]
    for c in report["cases"]:
        j, t, case = c["jax"], c["torch"], c["case"]
        if "skipped" in c:
            lines.append(f"| {case['name']} | {case['batch']} | 0 | skipped: {c['skipped']} |" + " |" * 8)
            continue
        gflop = j["flops_per_step"] / 1e9
        jg, tg = gflop / j["step_s_median"], gflop / t["step_s_median"]
        lines.append(
            f"| {case['name']} | {case['batch']} | {len(j['step_s'])} | {j['images_per_s']:.2f} | "
            f"{t['images_per_s']:.2f} | **{j['images_per_s'] / t['images_per_s']:.2f}** | "
            f"{j['trace_s']:.1f} + {j['compile_s']:.1f} s | {t['first_step_s']:.1f} s | "
            f"{j['max_rss_mib']:.0f} / {t['max_rss_mib']:.0f} MiB | {gflop:.0f} | {jg:.0f} ({100 * jg / peak:.0f} %) | "
            f"{tg:.0f} ({100 * tg / peak:.0f} %) |")
    gans = [c for c in ran if c["case"]["model"] == "gan"]
    if gans:
        n = m["gen_batch"]
        lines += ["", f"| GAN generation (EMA G + text encoder) | ours img/s (batch {n}) | PyTorch img/s | "
                  "ours/PyTorch | ours 1-prompt latency | PyTorch latency | ours/PyTorch speed |", "|" + "---|" * 7]
        for c in gans:
            j, t = c["jax"], c["torch"]
            jb, tb = n / j["generate_batch_s"], n / t["generate_batch_s"]
            lines.append(f"| {c['case']['name']} | {jb:.1f} | {tb:.1f} | **{jb / tb:.2f}** | "
                         f"{1e3 * j['generate_single_s']:.0f} ms | {1e3 * t['generate_single_s']:.0f} ms | "
                         f"**{t['generate_single_s'] / j['generate_single_s']:.2f}** |")
    for c in report["cases"]:
        if "profile" in c:
            lines += ["", profile_markdown(c["profile"], c["jax"]["step_s_median"], peak)]
    lines += ["", "GFLOP/step: XLA's cost analysis of our compiled step; PyTorch's GFLOP/s divides the same count "
              "by its step time. Ratios > 1: ours is faster."]
    return "\n".join(lines)


def profile_markdown(profile: dict, step_s: float, peak: float) -> str:
    rate = lambda flops, s: flops / 1e9 / s if s else 0.0  # noqa: E731
    lines = ["Our GAN step, part by part (each part jitted on its own; median of 2 runs):", "",
             "| part | time | vs full step | GFLOP | GFLOP/s |", "|---|---|---|---|---|"]
    for name, p in profile["parts"].items():
        lines.append(f"| {name} | {p['seconds']:.2f} s | {100 * p['seconds'] / step_s:.0f} % | "
                     f"{p['flops'] / 1e9:.1f} | "
                     f"{rate(p['flops'], p['seconds']):.0f} |")
    ops = profile["ops"]
    total = ops["traced_op_seconds"]
    lines += ["", f"One full step by XLA op kind (perfetto trace; {total:.1f} s of op time, summed over threads):", "",
              "| op kind | ops | time | share | GFLOP | GFLOP/s (% peak) |", "|---|---|---|---|---|---|"]
    for kind, c in sorted(ops["categories"].items(), key=lambda kv: -kv[1]["seconds"]):
        r = rate(c["flops"], c["seconds"])
        lines.append(f"| {kind} | {c['count']} | {c['seconds']:.2f} s | {100 * c['seconds'] / total:.0f} % | "
                     f"{c['flops'] / 1e9:.1f} | {r:.0f} ({100 * r / peak:.0f} %) |")
    lines += ["", "| slowest ops | kind | output | time | GFLOP/s |", "|---|---|---|---|---|"]
    for t in ops["top"][:8]:
        lines.append(f"| {t['op']} | {t['kind']} | {t['shape']} | {t['seconds']:.2f} s | "
                     f"{rate(t['flops'], t['seconds']):.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ profile of our GAN step


def profile_gan_step(runner: JaxGan) -> dict:
    """Times the parts of our GAN step as separately jitted functions (pure: spectral-norm state frozen), and
    breaks one full step down by XLA op kind."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pikagen_jax.losses.gan import d_hinge_loss, g_hinge_loss, ma_gp, mismatched_sentences
    state, config = runner.state, runner.config
    images, ids, mask = (runner.batch[k] for k in ("image", "token_ids", "attention_mask"))
    z = jax.random.normal(jax.random.key(1), (images.shape[0], config.model.z_dim))

    def hinge(d, x3, s3):
        return d_hinge_loss(*jnp.split(d(x3, s3, update_stats=False), 3))[0]

    def penalty(d, x, s):
        return ma_gp(lambda a, b: d(a, b, update_stats=False, compute_dtype=jnp.float32), x, s,
                     weight=config.loss.magp_weight, power=config.loss.magp_power)[0]

    def g_loss(gen, text, d):
        tokens, sentence = text(ids, mask)
        return g_hinge_loss(d(gen(z, sentence, tokens, mask), sentence, update_stats=False))[0]

    tokens, sentence = nnx.jit(lambda t: t(ids, mask))(state.text_encoder)
    fake = nnx.jit(lambda g: g(z, sentence, tokens, mask))(state.generator)
    x3 = jnp.concatenate([images, fake, images])
    s3 = jnp.concatenate([sentence, sentence, mismatched_sentences(sentence)])
    d, gen, text = state.discriminator, state.generator, state.text_encoder
    parts = {
        "text encoder forward": (lambda t: t(ids, mask), (text,)),
        "G forward": (lambda g: g(z, sentence, tokens, mask), (gen,)),
        "D forward, 3B (real / fake / mismatched)": (hinge, (d, x3, s3)),
        "D hinge forward + backward, 3B": (nnx.grad(hinge), (d, x3, s3)),
        "MA-GP forward + backward (2nd order), B": (nnx.grad(penalty), (d, images, sentence)),
        "G step: text + G + D forward, backward to G + text": (
            nnx.grad(g_loss, argnums=(0, nnx.DiffState(1, state.text_filter))), (gen, text, d)),
    }
    out = {"parts": {}}
    for name, (fn, modules) in parts.items():
        graphdef, variables = nnx.split(modules)
        compiled = jax.jit(lambda v, f=fn, g=graphdef: f(*nnx.merge(g, v))).lower(variables).compile()
        jax.block_until_ready(compiled(variables))
        seconds = statistics.median(timed(lambda: jax.block_until_ready(compiled(variables))) for _ in range(2))
        out["parts"][name] = {"seconds": seconds, "flops": xla_flops(compiled)}
    out["ops"] = op_breakdown(runner.compiled, runner.train)
    return out


def op_breakdown(compiled, run_step) -> dict:
    """Time per top-level XLA op of one run of `compiled` (perfetto trace), grouped by kind, with the FLOPs
    of convolutions and dots computed from their HLO shapes."""
    import gzip

    import jax
    hlo = parse_hlo(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run_step()
        events = json.load(gzip.open(next(Path(trace_dir).rglob("perfetto_trace.json.gz"))))
    per_op: dict[str, float] = {}
    for event in events["traceEvents"] if isinstance(events, dict) else events:
        if event.get("ph") == "X" and event.get("name") in hlo["entry"]:
            per_op[event["name"]] = per_op.get(event["name"], 0.0) + event.get("dur", 0.0) / 1e6
    categories: dict[str, dict] = {}
    top = []
    for name, seconds in per_op.items():
        kind, flops, shape = classify(name, hlo)
        entry = categories.setdefault(kind, {"seconds": 0.0, "flops": 0.0, "count": 0})
        entry["seconds"] += seconds
        entry["flops"] += flops
        entry["count"] += 1
        top.append({"op": name, "kind": kind, "seconds": seconds, "flops": flops, "shape": shape})
    top.sort(key=lambda t: -t["seconds"])
    return {"categories": categories, "top": top[:10], "traced_op_seconds": sum(per_op.values())}


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])(?:\{[^}]*\})? (\w[\w-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")


def parse_hlo(text: str) -> dict:
    """An HLO module's instructions (name -> (shape, opcode, rest of line)), each computation's instruction
    names, and the names of the ENTRY computation's (top-level) instructions."""
    instructions, members, entry, current = {}, {}, [], None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = members.setdefault(header[1], [])
            if line.startswith("ENTRY"):
                entry = current
        elif (match := _INSTRUCTION.match(line)) and current is not None:
            instructions[match[1]] = (match[2], match[3], match[4])
            current.append(match[1])
    return {"instructions": instructions, "members": members, "entry": set(entry)}


def _dims(shape: str) -> list[int]:
    inner = shape[shape.index("[") + 1:-1]
    return [int(d) for d in inner.split(",")] if inner else []


def classify(name: str, hlo: dict) -> tuple[str, float, str]:
    """(kind, FLOPs, output shape) of a top-level op; a fusion is classified by the conv / dot it calls.

    Conv kinds: 'kernel-grad' when the window is wider than the output (a weight gradient), 'lhs-dilated'
    (a transposed conv: input gradient of a strided conv), else forward / input-gradient convs."""
    table = hlo["instructions"]
    shape, _, rest = table[name]
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    inner = ([n for n in hlo["members"].get(called[1], []) if table[n][1] in ("convolution", "dot")]
             if called else [name])
    for op_name in inner:
        op_shape, opcode, op_rest = table[op_name]
        lhs_name = re.match(r"%?([\w.\-]+)", op_rest)[1]
        lhs = _dims(table[lhs_name][0]) if lhs_name in table else []
        if opcode == "dot":
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", op_rest)
            k = math.prod(lhs[int(i)] for i in contracting[1].split(",") if i) if contracting and lhs else 0
            return "dot (matmul)", 2.0 * math.prod(_dims(op_shape)) * k, shape
        if opcode == "convolution":
            window = [int(s) for s in re.search(r"size=([\dx]+)", op_rest)[1].split("x")]
            labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", op_rest)
            out = _dims(op_shape)
            groups = re.search(r"feature_group_count=(\d+)", op_rest)
            lhs_dilate = re.search(r"lhs_dilate=([\dx]+)", op_rest)
            zeros = math.prod(int(s) for s in lhs_dilate[1].split("x")) if lhs_dilate else 1  # skipped taps
            in_features = lhs[labels[1].index("f")] if lhs else 0
            flops = 2.0 * math.prod(out) * math.prod(window) * in_features / (int(groups[1]) if groups else 1) / zeros
            if max(window) > max(out[labels[3].index(str(i))] for i in range(len(window))):
                return "conv kernel-grad (weight gradient)", flops, shape
            if lhs_dilate:
                return "conv lhs-dilated (transposed)", flops, shape
            return "conv (forward / input-grad)", flops, shape
    return "other (elementwise, reduce, copy)", 0.0, shape


if __name__ == "__main__":
    main()
