"""Appending a benchmark's result to BENCHMARKS.md (or another Markdown file) with the command that made it.

    append_markdown("BENCHMARKS.md", "Multi-process (2026-12-05)", command_line(__file__, argv), table)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """`python bench/<script> <arguments>` as the user typed it (`argv` None: this process's own arguments)."""
    arguments = list(argv) if argv is not None else sys.argv[1:]
    return " ".join([f"python bench/{Path(script).name}", *arguments])


def append_markdown(path: str | Path, heading: str, command: str, body: str) -> None:
    """Appends `### heading`, the command in backticks and `body` (a table and notes) to the file at `path`."""
    with open(path, "a", encoding="utf-8") as md:
        md.write(f"\n### {heading}\n\n`{command}`\n\n{body.rstrip()}\n")
