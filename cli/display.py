"""Where humans read: the stderr console, progress bars, spinners and help text. Imports no torch."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any

from rich.console import Console


def _console() -> Console:
    """Messages, progress and tables for humans go to stderr; stdout stays clean for scripts. Without a
    terminal (CI logs, pipes) lines are not cut at 80 columns: tables print at their full width."""
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 400
    return console


console = _console()


@contextmanager
def step_progress(total: int, description: str, quiet: bool):
    """A rich progress bar over `total` steps; yields `advance(**fields)`. No-op when quiet."""
    if quiet:
        yield lambda **kw: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(**fields: Any) -> None:
            info = "  ".join(f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=1, info=info)

        yield advance


@contextmanager
def status(message: str, quiet: bool):
    """A spinner while something without steps runs (model loading, decoding)."""
    if quiet:
        yield
        return
    t0 = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"[dim]{message.rstrip('.')} done ({time.perf_counter() - t0:.1f}s)[/]")


def reflow(text: str) -> str:
    """Command help for typer's rich markup: typer keeps single line breaks after the first paragraph, so
    source-wrapped prose would break mid-sentence at the terminal's width. Joins the lines of each prose
    paragraph so the terminal wraps it; paragraphs with indented lines (examples) stay as written."""
    out = []
    for para in text.strip("\n").split("\n\n"):
        lines = para.splitlines()
        out.append(para if any(ln.startswith(" ") for ln in lines) else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


