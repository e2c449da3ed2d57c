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




class BatchProgress:
    """Progress of a batch: an overall bar over the jobs (ETA from the measured job times) and a bar over the
    steps of the job in flight. Without a terminal (CI logs, pipes) no bars: one line per finished job."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done = total, quiet, 0
        self.times: list[float] = []
        self.bars = not quiet and console.is_terminal
        self._progress = None

    def __enter__(self) -> BatchProgress:
        if self.bars:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("batch", total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def eta(self) -> str:
        if not self.times:
            return "eta -"
        s = (self.total - self.done) * sum(self.times) / len(self.times)
        return f"eta {int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"

    def steps(self, label: str):
        """A `progress(total, description)` for the job body: a per-job bar (or nothing)."""

        @contextmanager
        def progress(total: int, description: str):
            if self._progress is None:
                yield lambda **kw: None
                return
            task = self._progress.add_task(f"{description} {label}", total=total, info="")

            def advance(**fields: Any) -> None:
                self._progress.update(task, advance=1, info="  ".join(f"{k}={v}" for k, v in fields.items()))

            try:
                yield advance
            finally:
                self._progress.remove_task(task)

        return progress

    def finished(self, label: str, status: str, seconds: float) -> None:
        """A job ended (done or failed): advance the overall bar, or print its line."""
        self.done += 1
        self.times.append(seconds)
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._overall, advance=1, info=f"{self.eta()}  last {seconds:.1f}s")
            if status != "done":
                self._progress.console.print(f"[red]{status}[/] {label}")
        else:
            console.print(f"[{self.done}/{self.total}] {status} {label} in {seconds:.1f}s, {self.eta()}",
                          soft_wrap=True)


def show_compare(report: dict, quiet: bool, to_stdout: bool) -> None:
    """The verdict table and the cost line on the console; the JSON document on stdout for --json -."""
    import json

    from rich.table import Table

    if to_stdout:
        print(json.dumps(report, indent=2))  # stdout, not the stderr console
    if quiet:
        return
    table = Table(title=f"A vs B: {report['pairs']} pairs in {report['groups']} prompt groups", title_justify="left")
    for col in ("metric", "better", "A", "B", "A-B (better +)", "CI", "win rate", "verdict"):
        table.add_column(col)
    style = {"a_better": "green", "b_better": "red", "no_difference": "dim"}
    for name, m in report["metrics"].items():
        ci = m.get("ci")
        # a set metric (FVD, FID) has one value per side and their difference, no per-pair mean or win rate
        table.add_row(name, m["better"], _num(m.get("a_mean", m.get("a_value"))),
                      _num(m.get("b_mean", m.get("b_value"))), _num(m.get("mean_difference", m.get("difference"))),
                      "-" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]",
                      _num(m.get("win_rate")), f"[{style[m['verdict']]}]{m['verdict']}[/]")
    console.print(table)
    sets = [n for n, m in report["metrics"].items() if m.get("kind") == "set" and m.get("resamples")]
    if sets:
        console.print(f"{', '.join(sets)}: set metrics, A and B each against the references; CI from "
                      f"{report['metrics'][sets[0]]['resamples']} resamples of the prompt groups")
    ratios = report["cost"]["a_over_b"]
    if ratios:
        console.print("cost A/B: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    for g in report["gate"]["failed"]:
        console.print(f"[red]gate[/]: A is worse than B on {g}")


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def show_recipes(recipes: list) -> None:
    """The shipped recipes: a table in a terminal; in a pipe one tab-separated line per recipe (command,
    name, path, about) on stdout."""
    import sys

    from rich.table import Table

    if not sys.stdout.isatty():
        for r in recipes:
            print(f"{r.family}\t{r.name}\t{r.path}\t{r.about}")
        return
    table = Table(title="vmt recipes (use: vmt COMMAND --recipe NAME)", title_justify="left")
    for col in ("name", "command", "about"):
        table.add_column(col)
    for r in recipes:
        table.add_row(r.name, f"vmt {r.family}", r.about)
    Console().print(table)


def rich_table(title: str, columns: list[tuple[str, str]], rows: list[list[str]]):
    """A rich Table of plain rows: (header, "left" | "right") columns, cells as text."""
    from rich.table import Column, Table

    table = Table(*(Column(c, justify=j, no_wrap=True) for c, j in columns), title=title, title_justify="left")
    for row in rows:
        table.add_row(*row)
    return table


class ChainProgress(BatchProgress):
    """Progress of a long-video chain: a bar over its segments (ETA from the segments made in this run;
    segments reused from the run folder count as done at once) and one over the denoising steps of the
    segment in flight. Gives the library's `progress` (`step`) and `on_segment` (`segment`) callbacks."""

    def __init__(self, quiet: bool):
        super().__init__(0, quiet)
        self._step_bar = None

    def __enter__(self) -> ChainProgress:
        super().__enter__()
        if self._progress is not None:
            self._progress.update(self._overall, description="segments")
        return self

    @property
    def callbacks(self) -> dict:
        """The keywords of WanChainRequest.run that report to these bars."""
        return {"progress": self.step, "on_segment": self.segment}

    def _total(self, total: int) -> None:
        self.total = total
        if self._progress is not None:
            self._progress.update(self._overall, total=total)

    def step(self, done: int, total: int, info: dict) -> None:
        if self._progress is None:
            return
        if self._step_bar is None:
            self._step_bar = self._progress.add_task(f"denoising {info.get('segment', '')}", total=total, info="")
        fields = {k: v for k, v in info.items() if k != "segment"}
        self._progress.update(self._step_bar, completed=done, info="  ".join(f"{k}={v}" for k, v in fields.items()))

    def segment(self, index: int, total: int, status: str, seconds: float) -> None:
        self._total(total)
        if self._progress is not None and self._step_bar is not None:
            self._progress.remove_task(self._step_bar)
            self._step_bar = None
        if status == "resumed":  # no time measured: it does not enter the ETA
            self.done += 1
            if self._progress is not None:
                self._progress.update(self._overall, advance=1, info=self.eta())
            elif not self.quiet:
                console.print(f"[{self.done}/{self.total}] segment {index + 1} reused from the run folder")
            return
        self.finished(f"segment {index + 1}", "done", seconds)


def show_chain(out: dict, quiet: bool) -> None:
    """What a Wan chain run reports: its plan (a dry run: always printed) or the video it wrote."""
    if out.get("dry_run"):
        est, mem = out["estimate"], out["memory"]
        console.print(f"[bold]{out['model']}[/]: {est['segments']} segments of {est['segment_frames']} frames -> "
                      f"{est['frames']} frames; NFE {est['nfe']} ({est['nfe_per_segment']} a segment), DiT passes "
                      f"{est['dit_forward']}" + (f" (backward {est['dit_backward']})" if est.get("dit_backward") else "")
                      + f"; estimated peak GPU memory {mem['peak_gib']} GiB (one segment)",
                      soft_wrap=True)
        for s in out["segments"]:
            cond = "first" if s["conditioned_on"] is None else f"on frame {s['conditioned_on']} of the last"
            if "reference_frames" in s:
                cond += ", reference frames {}-{}".format(*s["reference_frames"])
            console.print(f"  segment {s['segment']}: output frames {s['output_frames'][0]}-{s['output_frames'][1]}"
                          f" (its frames {s['keeps'][0]}-{s['keeps'][1]}), seed {s['seed']}, {cond}: {s['prompt']}",
                          soft_wrap=True, markup=False)
        return
    if not quiet:
        d = out["drift"] or {}
        console.print(f"[green]wrote[/] {out['frames']} frames from {out['segments']} segments ({out['resumed']} "
                      f"reused) NFE {out['nfe']}, DiT passes {out['dit_forward']}, denoise {out['seconds']:.1f}s"
                      + (f"; drift: final delta E {d['final_delta_e']:.2f}, mean seam {d['mean_seam']:.2f}" if d else ""))
