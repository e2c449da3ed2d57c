"""The batch path of `vmt refine` and `vmt transfer` (--batch, --dry-run): many jobs, one model load.

Every job is held to the single command's rules: its values are converted like recipe values, its numbers and
paths go through the scaffold's checks, and the command's own checks (`check_job`, `check_model_job`) run on
every job before any weights load. Then the model loads once and each job runs the command's `run_job`, the
same body a single run uses. Under torchrun the jobs still to run are split over the ranks; rank 0 writes the
manifest. Imports no torch at module level.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.display import BatchProgress, console, status
from cli.scaffold import (
    NOT_FROM_RECIPE, CommandSpec, Params, Terminated, check_paths, check_values, convert_recipe_value, error_text,
    flag, param_types, print_error, resolve_params, run_guarded,
)

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

# Options of the batch machinery: never per job, never part of a job's parameters.
BATCH_OPTIONS = frozenset({"batch", "seeds", "naming", "dry_run", "format"})
# Options that decide how the model loads: one value for the whole batch.
LOAD_OPTIONS = frozenset({"model", "revision", "device", "dtype", "offload", "vae_tiling", "grad_checkpointing",
                          "storage_dtype", "attention_backend", "compile", "lora"})
# Options that say how to run, not what to compute: not compared when a batch resumes.
NOT_IN_KEY = NOT_FROM_RECIPE | BATCH_OPTIONS


@dataclass(frozen=True)
class BatchCommand:
    """How the batch path drives one command: its declarations and its run request (vmt.runs), whose methods
    are the one interface of every job kind: check() (no model) -> prepared, check_model(geometry),
    estimate(prepared, geometry), load(device, inspected), run_on(backend, output, prepared, timer, ...)."""

    spec: CommandSpec
    request: type
    required: tuple[str, ...] = ("prompt",)  # per job: from the job file or the command line

    def make(self, params: dict) -> Any:
        """The request of a job (or of the batch's shared options) from its resolved parameters."""
        from dataclasses import fields

        return self.request(**{f.name: params[f.name] for f in fields(self.request) if f.name in params})


@dataclass
class Plan:
    """Every job resolved and checked, with what a run would do with it."""

    source: str
    out_dir: Path | None
    jobs: list = field(default_factory=list)
    prepared: dict[int, Any] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)  # job index -> run | skip | redo
    keys: dict[int, dict] = field(default_factory=dict)
    estimates: dict[int, dict] = field(default_factory=dict)
    inspected: Any = None
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def todo(self) -> list:
        return [j for j in self.jobs if self.states[j.index] != "skip"]


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
    return {k: v for k, v in params.items() if k not in BATCH_OPTIONS}


def _at(where: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a check; its error gets the job's place (file and line) in front."""
    from vmt.errors import VmtError

    try:
        return fn(*args)
    except VmtError as e:
        raise type(e)(f"{where}: {e.message}") from None


def plan_batch(ctx: typer.Context, cmd: BatchCommand, p: Params) -> Plan:
    """Read the jobs, resolve their parameters and output names, and check what the batch reads against what
    it writes (all cheap: no model). The per-job checks follow in `check_jobs`."""
    from vmt.batch import Job, JobSchema, assign_outputs, parse_seeds, read_jobs
    from vmt.errors import VmtUsageError

    spec = cmd.spec
    if p["format"] not in ("text", "json"):
        raise VmtUsageError(f"--format {p['format']!r}: use text or json")
    if p["output"] is None:
        raise VmtUsageError("missing option '--output' / '-o'" + (" (with --batch: the folder the batch writes "
                                                                   "into)" if p["batch"] else ""))
    check_values(ctx, spec, p)  # the command line's own values, before any job
    types_ = param_types(ctx)
    if p["batch"] is None:  # --dry-run of a single run: one job, the output as given
        if p["seeds"] is not None:
            raise VmtUsageError("--seeds needs --batch")
        source, out_dir = "command line", None
        jobs = [Job(0, 0, {}, output=Path(p["output"]).expanduser())]
    else:
        out_dir = Path(p["output"]).expanduser()
        if out_dir.exists() and not out_dir.is_dir():
            raise VmtUsageError(f"-o {out_dir} is a file; with --batch, -o is the folder the batch writes into")
        if not out_dir.parent.is_dir():
            raise VmtUsageError(f"-o folder {out_dir.parent} does not exist; create it first")
        import os

        writable = out_dir if out_dir.is_dir() else out_dir.parent
        if not os.access(writable, os.W_OK | os.X_OK):
            raise VmtUsageError(f"-o folder {writable} is not writable; choose another folder")
        allowed = frozenset(k for k in types_ if k not in NOT_IN_KEY | LOAD_OPTIONS and k != "ctx")
        schema = JobSchema(
            spec.name, convert=lambda name, v: convert_recipe_value(*types_[name], v), allowed=allowed,
            fixed={k: "the model loads once for the whole batch" for k in LOAD_OPTIONS},
            paths=frozenset(spec.inputs),
        )
        source = str(p["batch"])
        from vmt.batch import MANIFEST_NAME, check_batch_files

        # Before reading it: a job file that is this batch's manifest would be replaced by it.
        check_batch_files([("--batch", Path(p["batch"]).expanduser())], [("the manifest", out_dir / MANIFEST_NAME)])
        jobs = read_jobs(Path(p["batch"]).expanduser(), schema, parse_seeds(p["seeds"]) if p["seeds"] else None)
    plan = Plan(source, out_dir, jobs)
    for job in jobs:
        pj = Params({k: v for k, v in p.items() if k not in BATCH_OPTIONS})
        pj.update(job.values)
        if out_dir is None:
            require(ctx, pj, cmd.required)
        for name in cmd.required:
            if pj.get(name) is None:
                raise VmtUsageError(f"{job.where(source)}: no {name}; give \"{name}\" on the line or "
                                    f"{flag(ctx, name)} on the command line")
        job.params = pj
    if out_dir is not None:
        assign_outputs(jobs, out_dir, p["naming"], source, spec.output("output").suffixes)
        _check_reads_and_writes(ctx, cmd, p, plan)
    for job in jobs:
        job.params["output"] = job.output
    return plan


def _check_reads_and_writes(ctx: typer.Context, cmd: BatchCommand, p: Params, plan: Plan) -> None:
    """Every file the batch reads against every file it writes, over all jobs (see vmt.batch.check_batch_files)."""
    from vmt.batch import MANIFEST_NAME, check_batch_files
    from vmt.io.atomic import sidecar_path

    reads: list[tuple[str, Path]] = [("--batch", Path(p["batch"]).expanduser())]
    if p.get("recipe") is not None and Path(p["recipe"]).is_file():
        reads.append(("--recipe", Path(p["recipe"])))
    writes: list[tuple[str, Path]] = [("the manifest", plan.out_dir / MANIFEST_NAME)]
    for job in plan.jobs:
        where = job.where(plan.source)
        for name in cmd.spec.inputs:
            values = job.params.get(name)
            for v in values if isinstance(values, list) else [values]:
                if v is not None:
                    reads.append((f"{where}: {flag(ctx, name).lstrip('-').lower()}", Path(v).expanduser()))
        writes += [(f"{where}: output", job.output), (f"{where}: sidecar", sidecar_path(job.output))]
    check_batch_files(reads, writes)


def check_jobs(ctx: typer.Context, cmd: BatchCommand, p: Params, plan: Plan) -> Iterator[Any]:
    """Each job's values, paths (scaffold rules) and checks against the model's config files, with its
    estimate and its resume key, yielded as soon as it is checked (a dry run prints it then). The model's
    config is read once, before the first job's model check. Creates the -o folder of a real batch."""
    from vmt.backends.wan import inspect_model
    from vmt.batch import job_key

    from dataclasses import replace

    spec, source, out_dir = cmd.spec, plan.source, plan.out_dir
    created = out_dir is not None and not out_dir.exists() and not p["dry_run"]
    if created:
        out_dir.mkdir(exist_ok=True)  # ranks may race to create it
    # A batch's outputs were checked as a whole (names, suffixes, reads against writes; existing ones are the
    # resume's business): per job only its inputs. A single dry run checks everything as the run would.
    path_spec = replace(spec, outputs={}) if out_dir is not None else spec
    digests: dict[str, str] = {}
    failed = True
    try:
        for job in plan.jobs:
            where = job.where(source) if out_dir is not None else "job"
            _at(where, check_values, ctx, spec, job.params)
            request = cmd.make(job.params)
            plan.prepared[job.index] = prepared = _at(where, request.check)
            _at(where, check_paths, ctx, path_spec, job.params)
            if plan.inspected is None:
                plan.inspected = inspect_model(p["model"], p["revision"])  # config files only, no weights
            _at(where, request.check_model, plan.inspected[1])
            plan.estimates[job.index] = request.estimate(prepared, plan.inspected[1])
            plan.keys[job.index] = {**job_key(job.params, NOT_IN_KEY),
                                    **_content_key(cmd, job.params, plan.inspected[0], digests)}
            yield job
        failed = False
    finally:
        if created and failed and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed check leaves no empty folder behind


def _content_key(cmd: BatchCommand, params: dict, resolved: Any, digests: dict[str, str]) -> dict[str, Any]:
    """What a job's result depends on beyond its parameters: the model folder's content (its fingerprint) and
    each input file's sha256, so that a resumed batch redoes a job whose model or reference changed at the
    same path."""
    from vmt.io.digest import file_digest

    def digest(path: Any) -> str:  # many jobs read one reference: hashed once (`digests` by resolved path)
        key = str(Path(path).resolve())
        if key not in digests:
            digests[key] = file_digest(path)
        return digests[key]

    inputs: dict[str, Any] = {}
    for name in cmd.spec.inputs:
        values = params.get(name)
        if isinstance(values, list):
            inputs[name] = [digest(v) for v in values]
        elif values is not None:
            inputs[name] = digest(values)
    return {"model_fingerprint": resolved.fingerprint, "input_sha256": inputs}


def _decide(plan: Plan, job: Any, p: Params) -> Any:
    """Run, skip (done with the same parameters and content) or redo (--overwrite) one job; returns the
    resume state when the job was made with other parameters or is incomplete and there is no --overwrite."""
    from vmt.batch import resume_state

    if plan.out_dir is None:
        plan.states[job.index] = "run"
        return None
    state = resume_state(job.output, plan.keys[job.index])
    if state.kind in ("todo", "done"):
        plan.states[job.index] = "run" if state.kind == "todo" else "skip"
        return None
    if p["overwrite"]:
        plan.states[job.index] = "redo"
        return None
    return state


def _not_resumable(plan: Plan, problems: list) -> Exception:
    from vmt.errors import VmtUsageError

    job, state = problems[0]
    what = "was made with other parameters" if state.kind == "changed" else "is incomplete"
    more = f" ({len(problems)} jobs in all)" if len(problems) > 1 else ""
    return VmtUsageError(f"{job.where(plan.source)}: {job.output} {what} ({state.detail}){more}; pass "
                         "--overwrite to redo, or choose another -o folder")


def decide_states(plan: Plan, p: Params) -> None:
    """Every job's action (`_decide`); jobs that cannot resume without --overwrite are one error naming the
    first and counting them."""
    problems = [(job, state) for job in plan.jobs if (state := _decide(plan, job, p)) is not None]
    if problems:
        raise _not_resumable(plan, problems)


def estimate_memory(plan: Plan, p: Params) -> None:
    """The plan's GPU memory: the job with the most tokens (times CFG branches), on the loaded model's files."""
    from vmt.backends.memory import memory_estimate

    dtype = p["dtype"] if p["dtype"] != "auto" else "bfloat16"  # the GPU default
    worst = max(plan.jobs, key=lambda j: plan.estimates[j.index]["tokens"] * plan.estimates[j.index]["cfg_branches"])
    est = plan.estimates[worst.index]
    storage = None if p.get("storage_dtype") in (None, "", "none") else p["storage_dtype"]
    guided = 0
    if est.get("dit_backward"):  # transfer: the guided forward runs to the capture block (or all blocks)
        guided = p["block"] + 1 if p.get("truncate", True) else plan.inspected[1].num_layers
    plan.memory = memory_estimate(plan.inspected[0].folder, dtype, p["offload"], est["tokens"],
                                  est["tokens"] * 4 * 16, est["cfg_branches"], storage, guided,
                                  p.get("grad_checkpointing", True))


def _plan_row(plan: Plan, job: Any, action: str) -> dict[str, Any]:
    e = plan.estimates[job.index]
    return {"job": job.index, "line": job.line, "output": str(job.output), "action": action,
            "prompt": job.params.get("prompt"), "seed": job.params.get("seed"),
            **{k: e[k] for k in ("steps", "nfe", "dit_forward", "dit_backward")}}


def dry_run(ctx: typer.Context, cmd: BatchCommand, plan: Plan, p: Params, show: bool) -> None:
    """The dry run's answer on stdout, streamed: a text line per job as soon as it is checked, then the totals
    (JSON: one document at the end). Nothing is written and no weights load. `show`: this rank prints."""
    totals = {"jobs": 0, "to_run": 0, "skipped": 0, "nfe": 0, "dit_forward": 0, "dit_backward": 0}
    rows = []
    for job in check_jobs(ctx, cmd, p, plan):
        problem = _decide(plan, job, p)
        if problem is not None:  # as the run would: this job cannot resume without --overwrite
            raise _not_resumable(plan, [(job, problem)])
        action = plan.states[job.index]
        row = _plan_row(plan, job, action)
        totals["jobs"] += 1
        if action == "skip":
            totals["skipped"] += 1
        else:
            totals["to_run"] += 1
            for k in ("nfe", "dit_forward", "dit_backward"):
                totals[k] += row[k]
        if not show:
            continue
        if p["format"] == "json":
            rows.append(row)
        else:
            typer.echo(f"{row['job']:>4}  {row['action']:<4}  {row['output']}  seed {row['seed']}  steps "
                       f"{row['steps']}  NFE {row['nfe']}  DiT fwd {row['dit_forward']} bwd {row['dit_backward']}  "
                       f"{row['prompt']!r}")
    estimate_memory(plan, p)
    totals["model_loads"] = 1 if totals["to_run"] else 0
    if not show:
        return
    m = plan.memory
    if p["format"] == "json":
        doc = {"command": cmd.spec.name, "source": plan.source,
               "output_dir": None if plan.out_dir is None else str(plan.out_dir), "model": p["model"],
               "jobs": rows, "totals": totals, "gpu_memory_estimate": m}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    typer.echo(f"{totals['to_run']} of {totals['jobs']} jobs to run ({totals['skipped']} done), one load of "
               f"{p['model']}: NFE {totals['nfe']}, DiT passes {totals['dit_forward']} forward "
               f"{totals['dit_backward']} backward; estimated peak GPU memory {m['peak_gib']} GiB "
               f"(weights {sum(v or 0 for v in m['weights_gib'].values()):.2f} GiB + activations "
               f"{m['activations_gib']} GiB)")


def run_batch(ctx: typer.Context, cmd: BatchCommand, params: dict) -> None:
    """`vmt COMMAND --batch JOBS` / `--dry-run`: plan, then (unless dry) one load and every job of this rank."""
    import contextlib

    from vmt.batch import process_group, ranks_from_env

    params = {k: v for k, v in params.items() if k != "ctx"}

    def go() -> None:
        p = resolve_params(ctx, cmd.spec.name, params, params.get("recipe"),
                           NOT_FROM_RECIPE | frozenset(cmd.spec.outputs) | BATCH_OPTIONS)
        ranks = ranks_from_env()
        plan = None
        try:
            with process_group(ranks) as dist, contextlib.ExitStack() as held:
                plan = plan_batch(ctx, cmd, p)
                if p["dry_run"]:
                    dry_run(ctx, cmd, plan, p, show=ranks.rank == 0)
                    return
                for _ in check_jobs(ctx, cmd, p, plan):
                    pass
                estimate_memory(plan, p)
                _lock_folder(plan, ranks, dist, held)
                decide_states(plan, p)
                if dist is not None:
                    dist.barrier()  # every rank decided from the same files before any writes
                _execute(cmd, plan, p, ranks, dist)
        except (KeyboardInterrupt, Terminated) as e:
            if not ranks.distributed or plan is None or not plan.keys:
                raise  # one process: said by _execute (or nothing was written, as run_guarded says)
            if ranks.rank == 0:  # one line per interrupt, not one per process, counted from the files
                console.print(f"[yellow]interrupted[/]: {_complete_on_disk(plan)} of {len(plan.jobs)} jobs complete "
                              f"in {plan.out_dir} ({ranks.world} processes), the jobs in flight were not written; "
                              "run the same command again to resume", soft_wrap=True)
            raise typer.Exit(e.exit_code if isinstance(e, Terminated) else 130) from None

    run_guarded(go, bool(params.get("debug", False)), ctx)


def _complete_on_disk(plan: Plan) -> int:
    """Jobs whose video and sidecar are in the output folder with this batch's parameters: what every process
    of an interrupted torchrun batch finished (each rank knows only its own share)."""
    from vmt.batch import resume_state

    return sum(resume_state(job.output, plan.keys[job.index]).kind == "done"
               for job in plan.jobs if job.index in plan.keys)


def _lock_folder(plan: Plan, ranks, dist, held) -> None:
    """Rank 0 locks the output folder for the batch (vmt.batch.folder_lock); under torchrun every rank learns
    whether it did, so that all stop together when another batch holds the folder."""
    from vmt.batch import folder_lock
    from vmt.errors import VmtError

    error = None
    if ranks.rank == 0:
        try:
            held.enter_context(folder_lock(plan.out_dir))
        except VmtError as e:
            error = e.message
    if dist is not None:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise VmtError(error)


def _execute(cmd: BatchCommand, plan: Plan, p: dict, ranks, dist) -> None:
    from cli.common import command_line, quiet_libraries
    from vmt.batch import MANIFEST_NAME, BatchRecord, rank_device
    from vmt.io.atomic import output_policy, placed_count, placed_since, sidecar_path
    from vmt.runtime import Timer

    quiet_libraries(p["debug"])
    mine = ranks.share(plan.todo)
    header = {"command": cmd.spec.name, "source": plan.source, "jobs": len(plan.jobs), "world_size": ranks.world,
              "model": p["model"], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record = BatchRecord(plan.out_dir / MANIFEST_NAME, header, plan.jobs,
                         [j for j in plan.jobs if plan.states[j.index] == "skip"], ranks, dist)
    if not mine:
        if ranks.rank == 0 and not p["quiet"]:
            console.print(f"all {len(plan.jobs)} jobs are done; nothing to run")
        header["load_s"] = 0.0
        record.save(final=True)
        return
    t0 = time.perf_counter()
    with status(f"Loading {p['model']}...", p["quiet"] or ranks.rank != 0):
        backend = cmd.make(p).load(device=rank_device(p["device"], ranks), inspected=plan.inspected)
    header["load_s"] = load_s = round(time.perf_counter() - t0, 4)
    failed = 0
    current, mark = None, placed_count()  # the job in flight, and what was committed before it
    try:
        with output_policy(bool(p["overwrite"])), BatchProgress(len(mine), p["quiet"]) as bar:
            for job in mine:
                current, mark = job, placed_count()
                _reset_counters(backend)
                timer, t_job = Timer(), time.perf_counter()
                extra = {"batch": {"source": plan.source, "line": job.line, "job": job.index, "rank": ranks.rank,
                                   "world_size": ranks.world, "load_s_shared": load_s,
                                   "params": plan.keys[job.index]}}
                try:
                    # The video and its sidecar are committed together (vmt.io.atomic.commit_together).
                    request = cmd.make(job.params)
                    with bar.steps(job.output.name)(request.steps, request.progress_label) as advance:
                        counts = request.run_on(backend, job.output, plan.prepared[job.index], timer,
                                                lambda done, total, info: advance(**info), record=job.params,
                                                command=command_line(), sidecar_extra=extra)
                    row = record.set(job, "done", seconds=round(time.perf_counter() - t_job, 4),
                                     timings_s=timer.stages, compute=counts)
                except Exception as e:  # one job's failure does not stop the others; exit 1 at the end
                    failed += 1
                    msg = error_text(e)
                    row = record.set(job, "failed", error=" ".join(msg.split()))
                    print_error(f"{plan.source} line {job.line} ({job.output}): {msg}")
                current = None
                bar.finished(str(job.output), row["status"], time.perf_counter() - t_job)
                record.save()
    except (KeyboardInterrupt, Terminated) as e:
        # Whatever was running (a job, the manifest's rewrite): finished jobs stay, the one in flight is gone,
        # unless the signal waited for its commit (then it is whole, and done).
        lost = "no job was lost"
        if current is not None:
            committed = {str(x) for x in placed_since(mark)}
            if {str(current.output), str(sidecar_path(current.output))} <= committed:
                record.set(current, "done", seconds=None, note="finished as the signal arrived")
            else:
                record.set(current, "interrupted")
                lost = f"the job in flight ({current.output}) was not written"
        record.save()
        if dist is not None:
            raise  # run_batch says it once, for all processes
        code = e.exit_code if isinstance(e, Terminated) else 130
        console.print(f"[yellow]interrupted[/]: {record.complete()} of {len(plan.jobs)} jobs complete, {lost}; "
                      "run the same command again to resume", soft_wrap=True)
        raise typer.Exit(code) from None
    record.save(final=True)
    if not p["quiet"] and ranks.rank == 0:
        console.print(f"[green]batch[/]: {len(mine) - failed} written, {failed} failed, "
                      f"{len(plan.jobs) - len(plan.todo)} already done; one model load ({load_s:.1f}s); "
                      f"manifest {record.path}")
    if failed:
        raise typer.Exit(1)


def _reset_counters(backend) -> None:
    """Compute counts and the device's peak memory per job, not per process (the model stays loaded)."""
    from dataclasses import fields

    for f in fields(backend.counts):
        setattr(backend.counts, f.name, 0)
    if backend.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(backend.device)
