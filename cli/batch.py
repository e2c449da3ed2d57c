"""How `vmt refine` and `vmt transfer` run a request on the command line: one video (`run_single`: a
spinner while the model loads, a bar over the steps, the request's summary line) or a batch (--batch,
--dry-run: the batch options, the command line's values resolved and checked, then the library's batch
engine vmt.runs.batch.Batch with progress bars, the dry run's plan on stdout, interrupts said once).
`run_request` picks one. Imports no torch at module level.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import command_line, quiet_libraries
from cli.display import BatchProgress, console, status, step_progress
from cli.scaffold import (
    NOT_FROM_RECIPE, CommandSpec, Terminated, check_paths, check_values, error_text, flag, note_text,
    print_error, resolve_params, run_command, run_guarded,
)
from vmt.runs.batch import BatchWatcher

_B = "Batch"
BatchOutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output file; a JSON sidecar with the "
                                                     "same stem records how it was made. With --batch: the folder "
                                                     "the batch writes into (created if missing).",
                                                     rich_help_panel="Output", show_default=False)]
BatchOpt = Annotated[Path | None, typer.Option("--batch", help="Run many jobs with one model load: a .jsonl file "
                                               "(one JSON object a line: prompt, seed, output, any option) or "
                                               "a text file (one prompt a line). -o is then the output folder.",
                                               rich_help_panel=_B, show_default=False)]
SeedsOpt = Annotated[str | None, typer.Option("--seeds", help="With --batch: one job per seed for every line "
                                              "without its own seed, e.g. 0-4 or 1,5,9-10.", rich_help_panel=_B,
                                              show_default=False)]
NamingOpt = Annotated[str, typer.Option("--naming", help="With --batch: output names, a template with {index} "
                                        "{sample} {prompt} {seed} {reference}, or a preset: index "
                                        "({index:04d}.mp4), vbench ({prompt}-{sample}.mp4).",
                                        rich_help_panel=_B)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Resolve and check every job, input and output and "
                                         "print the plan (NFE, DiT passes, estimated GPU memory); load no "
                                         "weights, write nothing.", rich_help_panel=_B)]
FormatOpt = Annotated[str, typer.Option("--format", help="Plan of --dry-run: text | json.", rich_help_panel=_B)]


def require(ctx: typer.Context, p: dict, names: tuple[str, ...]) -> None:
    """A single run needs these (a batch takes them per job) and one process: else a usage error."""
    from vmt.batch import ranks_from_env
    from vmt.errors import VmtUsageError

    ranks = ranks_from_env()
    if ranks.distributed:
        raise VmtUsageError(f"launched as {ranks.world} processes (torchrun): a single run would write the same "
                            "video in every one; give the jobs with --batch to split them over the processes")
    for name in names:
        if p.get(name) is None:
            f = flag(ctx, name)
            what = f"option '{f}'" if f.startswith("-") else f"argument '{f}'"
            raise VmtUsageError(f"missing {what} (see `vmt {ctx.info_name} --help`)")


def is_batch(params: dict) -> bool:
    return params.get("batch") is not None or bool(params.get("dry_run"))


def single_params(params: dict) -> dict:
    """A single run's locals without the batch options: its sidecar keeps exactly the parameters it had."""
    from vmt.runs.batch import BATCH_OPTIONS

    return {k: v for k, v in params.items() if k not in BATCH_OPTIONS}


def run_request(ctx: typer.Context, spec: CommandSpec, params: dict) -> None:
    """A command's one call: its locals() as a batch (`run_batch`) or as a single run (`run_single`)."""
    if is_batch(params):
        run_batch(ctx, spec, spec.request, params)
    else:
        run_command(ctx, spec, single_params(params), lambda p: run_single(ctx, spec.request, p))


def run_single(ctx: typer.Context, request_class: type, p: dict) -> None:
    """One video: the request checks itself, reads its inputs (a bad file fails before minutes of loading),
    loads the model once (with a spinner), runs with a bar over its steps, and says what it wrote."""
    from rich.text import Text

    from vmt.runs.fields import request_from
    from vmt.runtime import Timer

    require(ctx, p, (*request_class.job_kind.required, "output"))
    request = request_from(request_class, p)
    prepared = request.check()
    quiet_libraries(p["debug"])
    inputs = request.read_inputs(timer := Timer())
    with status(f"Loading {p['model']}...", p["quiet"]), timer.stage("load"):
        backend = request.load()  # the size is checked against the config before the weights load
    notes = None if p["quiet"] else (
        lambda msg: console.print(Text.assemble(("note: ", "yellow"), note_text(msg, ctx))))
    with step_progress(request.steps, request.progress_label, p["quiet"]) as advance:
        counts = request.run_on(backend, Path(p["output"]), prepared, timer, lambda d, t, info: advance(**info),
                                record=p, command=command_line(), notify=notes, **inputs)
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {p['output']} {request.summary(counts, timer)}")


class _Shown(BatchWatcher):
    """A batch on the terminal: a spinner while the model loads, bars over the jobs and the steps of the job
    in flight (cli.display.BatchProgress), one error line per failed job."""

    def __init__(self, source: str, quiet: bool, rank: int):
        self.source, self.quiet, self.rank = source, quiet, rank
        self.bar: BatchProgress | None = None

    def loading(self, model: str):
        return status(f"Loading {model}...", self.quiet or self.rank != 0)

    def running(self, jobs: int):
        self.bar = BatchProgress(jobs, self.quiet)
        return self.bar

    @contextlib.contextmanager
    def job(self, job, steps: int, label: str):
        with self.bar.steps(job.output.name)(steps, label) as advance:
            yield lambda done, total, info: advance(**info)

    def finished(self, job, status: str, seconds: float) -> None:
        self.bar.finished(str(job.output), status, seconds)

    def failed(self, job, error: Exception) -> None:
        print_error(f"{self.source} line {job.line} ({job.output}): {error_text(error)}")

    def error_text(self, error: Exception) -> str:
        return error_text(error)


def run_batch(ctx: typer.Context, spec: CommandSpec, request: type, params: dict) -> None:
    """`vmt COMMAND --batch JOBS` / `--dry-run`: the command line's values resolved and checked, then the
    library's batch engine (vmt.runs.batch): plan, and unless dry, one load and every job of this rank."""
    from vmt.batch import process_group, ranks_from_env
    from vmt.errors import VmtUsageError
    from vmt.runs.batch import BATCH_OPTIONS, Batch

    params = {k: v for k, v in params.items() if k != "ctx"}
    batch = None

    def go() -> None:
        nonlocal batch
        p = resolve_params(ctx, spec.name, params, params.get("recipe"),
                           NOT_FROM_RECIPE | frozenset(spec.outputs) | BATCH_OPTIONS, spec.request)
        if p["format"] not in ("text", "json"):
            raise VmtUsageError(f"--format {p['format']!r}: use text or json")
        if p["output"] is None:
            raise VmtUsageError("missing option '--output' / '-o'" + (" (with --batch: the folder the batch "
                                                                       "writes into)" if p["batch"] else ""))
        check_values(ctx, spec, p)  # the command line's own values, before any job
        if p["batch"] is None:  # the dry run of a single run: checked as the run would be
            require(ctx, p, request.job_kind.required)
            check_paths(ctx, spec, p)
        ranks = ranks_from_env()
        with process_group(ranks) as dist, contextlib.ExitStack() as held:
            batch = Batch(request, p, None if p["batch"] is None else Path(p["batch"]).expanduser(),
                          Path(p["output"]).expanduser(), p["seeds"], p["naming"], bool(p["overwrite"]),
                          bool(p["dry_run"]), ranks, dist, _Shown(str(p["batch"]), p["quiet"], ranks.rank),
                          command_line())
            batch.read()
            if p["dry_run"]:
                return show_plan(batch, p["format"], show=ranks.rank == 0)
            batch.prepare(held)
            quiet_libraries(p["debug"])
            if not batch.ranks.share(batch.todo) and ranks.rank == 0 and not p["quiet"]:
                console.print(f"all {len(batch.jobs)} jobs are done; nothing to run")
            result = batch.execute()
        if not p["quiet"] and ranks.rank == 0 and result.written + result.failed:
            console.print(f"[green]batch[/]: {result.written} written, {result.failed} failed, "
                          f"{result.already_done} already done; one model load ({result.load_s:.1f}s); "
                          f"manifest {result.manifest}")
        if result.failed:
            raise typer.Exit(1)

    def interrupted(e: BaseException) -> None:
        """One line per interrupt of a running batch (not one per process), then the signal's exit code."""
        if batch is None or (batch.lost is None and not (batch.ranks.distributed and batch.keys)):
            raise e  # nothing was written (run_guarded says so)
        if batch.ranks.distributed:
            if batch.ranks.rank == 0:  # counted from the files: each rank knows only its own share
                console.print(f"[yellow]interrupted[/]: {batch.complete_on_disk()} of {len(batch.jobs)} jobs "
                              f"complete in {batch.out} ({batch.ranks.world} processes), the jobs in flight were "
                              "not written; run the same command again to resume", soft_wrap=True)
        else:
            console.print(f"[yellow]interrupted[/]: {batch.record.complete()} of {len(batch.jobs)} jobs complete, "
                          f"{batch.lost}; run the same command again to resume", soft_wrap=True)
        raise typer.Exit(e.exit_code if isinstance(e, Terminated) else 130) from None

    def guarded() -> None:
        try:
            go()
        except (KeyboardInterrupt, Terminated) as e:
            interrupted(e)

    run_guarded(guarded, bool(params.get("debug", False)), ctx)


def show_plan(batch, format: str, show: bool) -> None:
    """The dry run's answer on stdout, streamed: a text line per job as soon as it is checked, then the totals
    (JSON: one document at the end). Nothing is written and no weights load. `show`: this rank prints."""
    rows = []
    for row in batch.plan_rows():
        if show and format == "json":
            rows.append(row)
        elif show:
            typer.echo(f"{row['job']:>4}  {row['action']:<4}  {row['output']}  seed {row['seed']}  steps "
                       f"{row['steps']}  NFE {row['nfe']}  DiT fwd {row['dit_forward']} bwd {row['dit_backward']}  "
                       f"{row['prompt']!r}")
    if not show:
        return
    totals, m, model = batch.totals(), batch.memory, batch.shared["model"]
    if format == "json":
        doc = {"command": batch.request.job_kind.command, "source": batch.source,
               "output_dir": None if batch.out_dir is None else str(batch.out_dir), "model": model,
               "jobs": rows, "totals": totals, "gpu_memory_estimate": m}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    typer.echo(f"{totals['to_run']} of {totals['jobs']} jobs to run ({totals['skipped']} done), one load of "
               f"{model}: NFE {totals['nfe']}, DiT passes {totals['dit_forward']} forward "
               f"{totals['dit_backward']} backward; estimated peak GPU memory {m['peak_gib']} GiB "
               f"(weights {sum(v or 0 for v in m['weights_gib'].values()):.2f} GiB + activations "
               f"{m['activations_gib']} GiB)")
