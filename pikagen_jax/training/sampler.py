"""What a trained run of any system generates with: the `RunSampler` record each system's loader returns,
and fixed-size batching so a jitted sampler compiles once (`generate_in_batches`).

`pikagen_jax.run_sampler.load_run_sampler(workdir)` picks the system's loader; systems build RunSamplers here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

GenerateFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RunSampler:
    """A trained run, ready to generate.

    Attributes:
      config: the run's saved config (data, text and model settings).
      step: the checkpoint step the weights come from.
      conditional: whether the images depend on the text (False for the unconditional DCGAN).
      generate: (token_ids [N, T] int, attention_mask [N, T] int, seed) -> images [N, S, S, 3] in [-1, 1].
      description: what generates, for logs (e.g. 'diffusion stage unet step 4000: ddim, 50 steps, guidance 3').
      nodes: the inference modules by checkpoint item name (what `pikagen_jax.export` writes out).
    """

    config: ml_collections.ConfigDict
    step: int
    conditional: bool
    generate: GenerateFn
    description: str = ""
    nodes: dict[str, Any] = dataclasses.field(default_factory=dict)


def generate_in_batches(fn: Callable[..., Any], arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Runs `fn(batch_index, *chunks)` over fixed-size chunks of `arrays` (equal leading sizes N) and
    returns the concatenated outputs [N, ...] as float32 numpy.

    Every call gets `min(batch_size, N)` rows: the last chunk is padded by repeating its first row (and the
    padding is dropped), so a jitted `fn` compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arrays = [np.asarray(a) for a in arrays]
    total = len(arrays[0])
    if total == 0:
        raise ValueError("nothing to generate: no rows given")
    if any(len(a) != total for a in arrays):
        raise ValueError(f"inputs disagree on the number of rows: {[len(a) for a in arrays]}")
    size = min(batch_size, total)
    outputs = []
    starts = range(0, total, size)
    if len(starts) > 1:  # a progress bar on a terminal (tqdm stays quiet when stderr is not one)
        from tqdm import tqdm

        starts = tqdm(starts, desc="generating", unit="batch", disable=None, leave=False)
    for index, start in enumerate(starts):
        count = min(size, total - start)
        chunks = [np.concatenate([a[start:start + count], np.repeat(a[start:start + 1], size - count, axis=0)])
                  for a in arrays]
        outputs.append(np.asarray(fn(index, *chunks), np.float32)[:count])
    return np.concatenate(outputs)
