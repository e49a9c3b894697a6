"""A web demo: type a Pokédex entry, see the sprites — and, for the GAN, where each word looked.

    python -m pikagen_jax.demo --model=models/gan64                      # an exported model folder
    python -m pikagen_jax.demo --model=models/gan64 --model=models/diffusion --port=7860
    python -m pikagen_jax.demo --workdir=workdirs/gan64                  # or a training work directory

A Gradio page (the `[demo]` extra) on localhost: a drop-down of the loaded models, a prompt box with example
entries, the seed and the number of images, and for latent diffusion the sampler, steps and guidance. It shows the
grid and, for the GAN, the word-to-region cross-attention maps of the first sprite (AttnGAN's figures: one heat map
per important word, from the last generator stage); for the L1 model, which attends over words without regions,
the attention weight of each word. Requests run one at a time in Gradio's queue. Every model's jitted sampler is
compiled once at start-up (timed in the console). Only the model folders / work directories are read, and only
Gradio's own temporary folder (a fresh one under the system temp dir) is written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

MAX_PROMPT_CHARS = 1000
EXAMPLES = [
    "A small blue turtle with a hard shell. It sprays foam from its mouth.",
    "A fiery orange lizard; the flame on its tail shows its life force.",
    "A yellow mouse that stores electricity in its red cheeks.",
    "There is a plant seed on its back right from the day this Pokémon is born.",
]
STOPWORDS = frozenset("a an the of and or to in on its it is this that with from by as at for be are was has have "
                      "his her their they them which when while into out up".split())
MAX_WORD_MAPS = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="an exported model folder (repeatable)")
    p.add_argument("--workdir", action="append", default=[], help="a training work directory (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max_images", type=int, default=16, help="most images one request may ask for")
    args = p.parse_args(argv)
    if not args.model and not args.workdir:
        p.error("give at least one --model=DIR (python -m pikagen_jax.export) or --workdir=RUN")
    return args


def clean_prompt(prompt: str) -> tuple[str | None, str]:
    """(cleaned prompt or None when refused, a message for the page)."""
    if prompt is None or not prompt.strip():
        return None, "Please type a description of a Pokémon (e.g. one of the examples)."
    if len(prompt) > MAX_PROMPT_CHARS:
        return None, f"That description has {len(prompt)} characters; please keep it under {MAX_PROMPT_CHARS}."
    controls = [c for c in prompt if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t"]
    text = "".join(" " if c in "\n\t" else c for c in prompt if c not in controls)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return None, "That description holds only control characters; please type words."
    note = f"Removed {len(controls)} control character(s) from the description. " if controls else ""
    return text, note


def heat_overlay(sprite: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A sprite (uint8 [S, S, 3]) with a word's attention map (coarser [h, w], upsampled) laid over it in red."""
    size = sprite.shape[0]
    w = weights / max(float(weights.max()), 1e-12)
    w = np.kron(w, np.ones((size // w.shape[0], size // w.shape[1])))
    heat = np.stack([np.ones_like(w), 1.0 - w, 1.0 - w], axis=-1) * 255.0  # white -> red
    return np.clip(0.45 * sprite + 0.55 * heat, 0, 255).astype(np.uint8)


class DemoModel:
    """One loaded model: its sampler (compiled at load), tokenizer, and attention read-outs."""

    def __init__(self, path: str, *, is_folder: bool):
        from pikagen_jax.data.pipeline import tokenizer_from_config
        from pikagen_jax.run_sampler import load_run_sampler

        self.path, self.is_folder = path, is_folder
        self.sampler = load_run_sampler(path)
        self.config = self.sampler.config
        self.system = self.config.system
        self.name = f"{Path(path).name} ({self.system}, step {self.sampler.step})"
        self.tokenizer = tokenizer_from_config(self.config) if self.sampler.conditional else None
        self._maps = None
        self._options: dict[tuple, Any] = {}
        started = time.perf_counter()
        warm = self.generate("A small blue turtle.", seed=0, num=1)  # compiles the jitted sampler once
        self.word_maps("A small blue turtle.", 0, np.zeros((warm.shape[1],) * 2 + (3,), np.uint8))  # and the maps
        self.compile_seconds = time.perf_counter() - started

    def sampler_for(self, options: dict[str, Any]):
        """The diffusion sampler for these settings (built once per setting)."""
        if self.system != "diffusion" or not options:
            return self.sampler
        key = tuple(sorted(options.items()))
        if key not in self._options:
            from pikagen_jax.run_sampler import load_run_sampler

            self._options[key] = load_run_sampler(self.path, **options)
        return self._options[key]

    def generate(self, prompt: str, *, seed: int, num: int, options: dict[str, Any] | None = None) -> np.ndarray:
        sampler = self.sampler_for(options or {})
        if self.tokenizer is None:
            return sampler.generate(np.zeros((num, 1), np.int32), np.ones((num, 1), np.int32), seed)
        ids, mask = self.tokenizer([prompt] * num)
        return sampler.generate(ids, mask, seed)

    def word_maps(self, prompt: str, seed: int, sprite: np.ndarray) -> tuple[list[tuple[np.ndarray, str]], str]:
        """Heat maps of the most attended words (GAN), or the words' attention weights as text (L1)."""
        if self.tokenizer is None or self.system not in ("gan", "l1"):
            return [], ""
        ids, mask = self.tokenizer([prompt])
        words = self._words(ids[0], mask[0])
        if self.system == "l1":
            return [], self._l1_word_weights(ids, mask, words)
        weights = self._gan_maps(ids, mask, seed)[0]  # [h, w, T]
        ranked = sorted(words, key=lambda item: -float(weights[..., item[0]].max()))[:MAX_WORD_MAPS]
        return [(heat_overlay(sprite, weights[..., index]), word) for index, word in ranked], ""

    def _words(self, ids: np.ndarray, mask: np.ndarray) -> list[tuple[int, str]]:
        """(token index, word piece) of the real, meaningful tokens (no [CLS]/[SEP], punctuation, stop words)."""
        decode = getattr(self.tokenizer, "id_to_token", None)
        out = []
        for index, (token, keep) in enumerate(zip(ids, mask)):
            if not keep:
                continue
            piece = decode(int(token)) if decode else str(int(token))
            text = piece.replace("##", "").replace("</w>", "").strip().lower()
            if not text or not any(ch.isalnum() for ch in text) or text in STOPWORDS or text.startswith(("[", "<")):
                continue
            out.append((index, piece.replace("</w>", "")))
        return out

    def _gan_maps(self, ids: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from pikagen_jax.training.samples import noise

        if self._maps is None:
            text, generator = self.sampler.nodes["text_encoder"], self.sampler.nodes["ema_generator"]
            graphdef, _ = nnx.split((text, generator))

            @jax.jit
            def maps(variables, ids, mask, z):
                text, generator = nnx.merge(graphdef, variables)
                tokens, sentence = text(ids, mask)
                return generator.attention_maps(z, sentence, tokens, mask)

            self._maps = lambda i, m, z: maps(nnx.state((text, generator)), i, m, z)
        z = noise(seed, 1, self.config.model.z_dim)
        return np.asarray(self._maps(jnp.asarray(ids), jnp.asarray(mask), z))

    def _l1_word_weights(self, ids: np.ndarray, mask: np.ndarray, words: list[tuple[int, str]]) -> str:
        import jax.numpy as jnp

        model = self.sampler.nodes["model"]
        weights = np.asarray(model.word_weights(jnp.asarray(ids), jnp.asarray(mask)))[0]
        ranked = sorted(words, key=lambda item: -float(weights[item[0]]))[:MAX_WORD_MAPS]
        return "Word attention (this model attends over words, not regions): " + ", ".join(
            f"**{word}** {100 * float(weights[index]):.0f} %" for index, word in ranked)


def build_app(models: list[DemoModel], max_images: int = 16):
    """The Gradio Blocks app over loaded models."""
    import gradio as gr

    from pikagen_jax.training.logging import make_image_grid, to_uint8

    by_name = {model.name: model for model in models}

    def run(name: str, prompt: str, seed: float, num: float, sampler: str, steps: float, guidance: float):
        model = by_name.get(name)
        if model is None:
            return None, [], f"Unknown model {name!r}; pick one from the list."
        text, note = clean_prompt(prompt) if model.tokenizer is not None else ("", "")
        if text is None:
            return None, [], note
        num, seed = int(min(max(num, 1), max_images)), int(seed)
        options = {"sampler": sampler, "sampling_steps": int(steps), "guidance_scale": float(guidance)} \
            if model.system == "diffusion" else {}
        started = time.perf_counter()
        images = model.generate(text, seed=seed, num=num, options=options)
        grid = make_image_grid(images, ncols=min(num, 8))
        maps, words = model.word_maps(text, seed, to_uint8(images[0]))
        seconds = time.perf_counter() - started
        return grid, maps, f"{note}{num} sprite(s) in {seconds:.2f} s with {model.name}. {words}".strip()

    with gr.Blocks(title="PikaPikaGen-JAX") as app:
        gr.Markdown("# PikaPikaGen-JAX\nType a Pokédex entry; the model draws the sprite.")
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(choices=list(by_name), value=models[0].name, label="model")
                prompt = gr.Textbox(label="description", lines=3, placeholder=EXAMPLES[0], elem_id="prompt")
                gr.Examples(EXAMPLES, inputs=prompt)
                seed = gr.Number(value=0, precision=0, label="seed")
                num = gr.Slider(1, max_images, value=4, step=1, label="images")
                with gr.Accordion("latent diffusion settings", open=False):
                    sampler = gr.Dropdown(choices=["ddim", "ddpm"], value="ddim", label="sampler")
                    steps = gr.Slider(1, 200, value=50, step=1, label="DDIM steps")
                    guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="guidance scale")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                grid = gr.Image(label="sprites", type="numpy", elem_id="grid")
                maps = gr.Gallery(label="where each word looks (GAN)", columns=3, height="auto")
                status = gr.Markdown(elem_id="status")
        button.click(run, [model, prompt, seed, num, sampler, steps, guidance], [grid, maps, status],
                     api_name="generate")
    app.queue(default_concurrency_limit=1)
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the page's server
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="pikagen-demo-")
    from pikagen_jax.errors import EXIT_USER_ERROR, UserError, debug_enabled, format_user_error

    started = time.perf_counter()
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs Gradio: pip install -e '.[demo]'", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        models = [DemoModel(path, is_folder=True) for path in args.model]
        models += [DemoModel(path, is_folder=False) for path in args.workdir]
    except UserError as error:
        if debug_enabled():
            raise
        print(format_user_error(error), file=sys.stderr)
        return EXIT_USER_ERROR
    for model in models:
        print(f"loaded {model.name}: sampler compiled and warmed up in {model.compile_seconds:.1f} s", flush=True)
    app = build_app(models, args.max_images)
    print(f"ready in {time.perf_counter() - started:.1f} s: http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
