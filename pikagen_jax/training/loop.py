"""The training loop every system shares: data, resume, step, log, sample, evaluate, checkpoint.

A system supplies its checkpointed nodes and three callables; the loop owns everything else::

    run_training(config, workdir, nodes={"generator": G, ...}, train_step=step_fn,
                 sample_fn=write_samples, eval_fn=evaluate)

`train_step(batch, step) -> metrics` receives a batch already sharded over the mesh and returns device
metrics (fetched to the host only at log steps). It must update `nodes` (in place, NNX style).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import ml_collections
from absl import logging

from pikagen_jax.data.pipeline import make_train_loader
from pikagen_jax.errors import UserError
from pikagen_jax.training import checkpointing, guards
from pikagen_jax.training import logging as train_logging
from pikagen_jax.training.compile_watch import CompileCounter
from pikagen_jax.training.mesh import Mesh, replicate_nodes, shard_batch
from pikagen_jax.training.workdir_lock import WorkdirLock

Metrics = Mapping[str, Any]


class WorkdirNotWritableError(UserError, PermissionError):
    """The work directory cannot be created or written."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports back."""

    final_step: int
    start_step: int
    last_metrics: dict[str, float]
    seconds: float
    steps_per_second: float
    first_step_compiles: int = 0  # XLA compilations inside the first train_step call of this process
    recompiles: int = 0  # compilations inside later train_step calls (0 unless shapes/dtypes changed)
    stopped_early: str | None = None  # the reason stop_fn gave, when the run ended before train.num_steps


def run_training(config: ml_collections.ConfigDict, workdir: str | Path, *, mesh: Mesh,
                 nodes: Mapping[str, Any], train_step: Callable[[dict, int], Metrics],
                 sample_fn: Callable[[int, Any], None] | None = None,
                 eval_fn: Callable[[int], dict[str, float]] | None = None,
                 stop_fn: Callable[[int], str | None] | None = None,
                 train_iterator: Iterator[dict] | None = None) -> TrainResult:
    """Runs `config.train.num_steps` steps, resuming from the latest checkpoint in `workdir`.

    Batches come from `make_train_loader(config)`, or from `train_iterator` (any iterator with Grain's
    `get_state` / `set_state`, checkpointed alike).
    Samples every `train.sample_every` steps (`sample_fn(step, writer)`), evaluates every
    `eval.every_steps` (`eval_fn(step)`; the best checkpoint is kept by `checkpoint.best_metric`),
    checkpoints every `checkpoint.every_steps` and at the end. Non-finite metrics stop the run or are
    counted as skipped updates, by `train.nonfinite_policy`. After each evaluation (and on resume)
    `stop_fn(step)` may return a reason to stop early (e.g. `training.early_stopping.stop_reason`); the run
    then checkpoints and ends, and `TrainResult.stopped_early` holds the reason. With `train.max_minutes`
    > 0 the run also stops (sampling and checkpointing that step) once this call has run that long, compile
    time included: a wall-clock budget (a resumed run gets a new one).
    """
    workdir = Path(workdir)
    check_writable(workdir)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _run_training(config, workdir, mesh=mesh, nodes=nodes, train_step=train_step, sample_fn=sample_fn,
                             eval_fn=eval_fn, stop_fn=stop_fn, train_iterator=train_iterator)


def check_writable(workdir: Path) -> None:
    """A work directory that cannot be created or written is a user error, found before anything runs."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirNotWritableError(f"cannot create the work directory {workdir}: {error.strerror}; pick "
                                      "another --workdir") from error
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirNotWritableError(f"the work directory {workdir} is not writable; fix its permissions or "
                                      "pick another --workdir")


def _save(checkpointer: checkpointing.Checkpointer, policy: str, *args, **kwargs) -> None:
    """A checkpoint save that stops the run with one line ('stop') or warns and goes on ('warn') on failure."""
    try:
        checkpointer.save(*args, **kwargs)
    except checkpointing.CheckpointSaveError as error:
        if policy != "warn":
            raise
        logging.warning("%s; training goes on (checkpoint.on_save_error='warn')", error)


def _run_training(config: ml_collections.ConfigDict, workdir: Path, *, mesh: Mesh, nodes: Mapping[str, Any],
                  train_step: Callable[[dict, int], Metrics], sample_fn: Callable[[int, Any], None] | None,
                  eval_fn: Callable[[int], dict[str, float]] | None,
                  stop_fn: Callable[[int], str | None] | None, train_iterator: Iterator[dict] | None) -> TrainResult:
    writer = train_logging.create_writer(workdir)
    train_logging.write_hparams(writer, config)
    checkpointer = checkpointing.Checkpointer.from_config(workdir, config)
    save_policy = config.checkpoint.get("on_save_error", "stop") if "checkpoint" in config else "stop"
    iterator = iter(make_train_loader(config)) if train_iterator is None else train_iterator
    replicate_nodes(mesh, *nodes.values())  # restored arrays take these (replicated) shardings
    start_step = checkpointer.restore_latest_into(dict(nodes), data_iterator=iterator)
    num_steps = int(config.train.num_steps)
    if start_step:
        logging.info("resumed from %s at step %d", workdir / "checkpoints", start_step)
    stopped_early = stop_fn(start_step) if stop_fn is not None and 0 < start_step < num_steps else None
    if start_step >= num_steps:
        logging.info("already trained to step %d (train.num_steps=%d): nothing to do", start_step, num_steps)
    elif stopped_early:
        logging.info("the run stopped early at step %d: %s; nothing to do (raise the patience to continue)",
                     start_step, stopped_early)
        num_steps = start_step
    reporter = train_logging.ProgressReporter(num_train_steps=num_steps, log_every_steps=config.train.log_every,
                                              writer=writer)
    policy = config.train.nonfinite_policy
    eval_every = int(config.eval.every_steps) if "eval" in config else 0
    budget_seconds = 60.0 * float(config.train.get("max_minutes", 0) or 0)
    last: dict[str, float] = {}
    skipped_since_log = 0  # device scalar: updates rejected as non-finite since the last log line
    started = time.perf_counter()
    done = start_step
    first_compiles, later_compiles = CompileCounter(), CompileCounter()
    try:
        for step in range(start_step, num_steps):
            counter = first_compiles if step == start_step else later_compiles
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = shard_batch(next(iterator), mesh)
                seen = later_compiles.count
                with counter:
                    metrics = dict(train_step(batch, step))
            if later_compiles.count > seen:
                logging.warning("the train step compiled again at step %d (%d recompilation(s) so far): a batch "
                                "shape or dtype changed", step + 1, later_compiles.count)
            done = step + 1
            if "skipped" in metrics:
                skipped_since_log = skipped_since_log + metrics.pop("skipped")
                metrics["skipped_updates"] = skipped_since_log
            host = reporter(done, metrics)
            if host is not None:
                skipped_since_log = 0
                last = host
                _check_step_health(host, done, policy)
            if sample_fn is not None and (done % config.train.sample_every == 0 or done == num_steps):
                with reporter.timed("sample"):
                    sample_fn(done, writer)
            if eval_fn is not None and eval_every and (done % eval_every == 0 or done == num_steps):
                with reporter.timed("eval"):
                    results = eval_fn(done)
                writer.write_scalars(done, results)
                logging.info("eval at step %d: %s", done, results)
                if checkpointer.best_metric:
                    checkpointer.maybe_save_best(done, nodes, results, data_iterator=iterator, config=config)
                if stop_fn is not None and done < num_steps and (reason := stop_fn(done)):
                    logging.info("stopping early at step %d of %d: %s", done, num_steps, reason)
                    stopped_early = reason
                    if sample_fn is not None and done % config.train.sample_every:  # the last step's samples
                        with reporter.timed("sample"):
                            sample_fn(done, writer)
            if budget_seconds and done < num_steps and stopped_early is None \
                    and time.perf_counter() - started >= budget_seconds:
                stopped_early = f"the time budget of {budget_seconds / 60:g} min (train.max_minutes) was reached"
                logging.info("stopping at step %d of %d: %s", done, num_steps, stopped_early)
                if sample_fn is not None and done % config.train.sample_every:  # the last step's samples
                    with reporter.timed("sample"):
                        sample_fn(done, writer)
            last_step = done == num_steps or stopped_early is not None
            if done % checkpointer.every_steps == 0 or last_step:  # no host sync on other steps
                with reporter.timed("checkpoint"):
                    _save(checkpointer, save_policy, done, nodes, data_iterator=iterator, config=config,
                          force=last_step)
            if stopped_early is not None:
                break
    except KeyboardInterrupt:  # Ctrl-C: keep the work of the last completed step, then stop
        if done > start_step:
            logging.warning("interrupted: saving step %d before exiting", done)
            _save(checkpointer, save_policy, done, nodes, data_iterator=iterator, config=config, force=True)
        raise
    finally:
        try:
            checkpointer.wait_until_finished()
        except checkpointing.CheckpointSaveError as error:
            if save_policy != "warn":
                raise
            logging.warning("%s", error)
        writer.flush()
    seconds = time.perf_counter() - started
    steps = max(done - start_step, 0)
    if steps:
        logging.info("train step: %d XLA compilation(s) in its first call, %d recompilation(s) after",
                     first_compiles.count, later_compiles.count)
    return TrainResult(final_step=max(done, start_step), start_step=start_step, last_metrics=last,
                       seconds=seconds, steps_per_second=steps / seconds if seconds > 0 else 0.0,
                       first_step_compiles=first_compiles.count, recompiles=later_compiles.count,
                       stopped_early=stopped_early)


def _check_step_health(host: dict[str, float], step: int, policy: str) -> None:
    """Non-finite losses never reach the parameters (the step guards them in-jit); here the run stops
    ('stop') or reports the skipped count ('skip'). `host` is not modified (the async writer holds it)."""
    skipped = int(host.get("skipped_updates", 0))
    if skipped and policy == "stop":
        raise FloatingPointError(
            f"a non-finite loss or gradient appeared before step {step} ({skipped} update(s) rejected, "
            "parameters left unchanged). Training stopped (train.nonfinite_policy='stop'); lower the learning "
            "rate or resume with --config.train.nonfinite_policy=skip to skip such updates.")
    if skipped:
        logging.warning("%d update(s) with non-finite values skipped since the last log (nonfinite_policy='skip')",
                        skipped)
    guards.check_finite(host, step, "skip" if skipped else policy)
