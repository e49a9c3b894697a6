"""Times what a user of a shared model waits for: the export, the folder's size against the work directory, the
demo's start-up (process start to the page answering) and its answer to a prompt after warm-up, driven by a real
Gradio client on localhost. Optionally saves a screenshot of the page in headless Chromium.

    python bench/bench_demo.py --workdir=workdirs/quality30/cpu --benchmarks_md=BENCHMARKS.md \
        --screenshot=docs/demo_screenshot.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import append_markdown, command_line  # noqa: E402

PROMPT = "A small blue turtle with a hard shell. It sprays water from its mouth."


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export(workdir: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pikagen_jax.export", f"--workdir={workdir}", f"--out={out}"], cwd=REPO,
                   check=True)
    return time.perf_counter() - started


def start_demo(model: Path, port: int) -> tuple[subprocess.Popen, float, str]:
    """Starts the demo; returns the process, the seconds until its port answered, and its console."""
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "pikagen_jax.demo", f"--model={model}", f"--port={port}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in server.stdout:
        log.append(line)
        if line.startswith("ready in"):
            break
    else:
        raise RuntimeError("the demo exited before it was ready:\n" + "".join(log[-40:]))
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return server, time.perf_counter() - started, "".join(log)


def time_answers(url: str, model_name: str, repeats: int) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    ask = lambda seed: client.predict(model_name, PROMPT, seed, 4, "ddim", 50, 3.0, api_name="/generate")  # noqa: E731
    ask(0)  # warm-up
    seconds = []
    for seed in range(1, repeats + 1):
        started = time.perf_counter()
        grid, _, status = ask(seed)
        seconds.append(time.perf_counter() - started)
        if grid is None:
            raise RuntimeError(f"the demo gave no image: {status}")
    return seconds


def screenshot(url: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=60_000)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            page.locator("#grid img").wait_for(state="visible", timeout=60_000)
            page.locator("#status").get_by_text("sprite(s) in").wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # let the images finish loading
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained run to export and serve")
    p.add_argument("--repeats", type=int, default=5, help="timed answers after the warm-up")
    p.add_argument("--screenshot", help="save a headless-Chromium screenshot of the page here")
    p.add_argument("--benchmarks_md", help="append the result and the command to this Markdown file")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        export_seconds = export(workdir, model)
        sizes = folder_mib(model), folder_mib(workdir)
        server, startup, log = start_demo(model, port := free_port())
        try:
            name = next(line for line in log.splitlines() if line.startswith("loaded ")).removeprefix("loaded ")
            name = name.split(": sampler")[0]
            answers = time_answers(f"http://127.0.0.1:{port}/", name, args.repeats)
            if args.screenshot:
                screenshot(f"http://127.0.0.1:{port}/", Path(args.screenshot))
        finally:
            server.terminate()
            server.wait(timeout=30)
    row = (f"| {workdir.name} | {export_seconds:.1f} s | {sizes[0]:.1f} MiB (work dir {sizes[1]:.1f} MiB) | "
           f"{startup:.1f} s | {statistics.median(answers):.2f} s (max {max(answers):.2f} s, {len(answers)} answers "
           "of 4 sprites) |")
    print(row)
    if args.benchmarks_md:
        header = "| run | export | model folder | demo start-up | answer after warm-up |\n|---|---|---|---|---|\n"
        append_markdown(args.benchmarks_md, f"Export and demo ({time.strftime('%Y-%m-%d')})",
                        command_line(__file__, argv), header + row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
