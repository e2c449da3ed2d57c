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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.display import BatchProgress, console, status
from cli.scaffold import (
    NOT_FROM_RECIPE, CommandSpec, Params, Terminated, check_numbers, check_paths, convert_recipe_value, flag,
    param_types, print_error, resolve_params, run_guarded,
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
    """How the batch path drives one command: its checks, its loader and its job body (see cli/refine.py)."""

    spec: CommandSpec
    check_job: Callable[[dict], Any]
    check_model_job: Callable[[dict, Any, Any], None]
    load_backend: Callable[..., Any]
    run_job: Callable[..., dict]
    estimate: Callable[[dict, Any, Any], dict]
    required: tuple[str, ...] = ("prompt",)  # per job: from the job file or the command line


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
        raise type(e)(f"{where}: {e}") from None


def plan_batch(ctx: typer.Context, cmd: BatchCommand, p: Params) -> Plan:
    """Read, resolve and check every job (no weights); decide which run, which are done, which changed."""
    from vmt.batch import Job, JobSchema, assign_outputs, parse_seeds, read_jobs
    from vmt.errors import VmtUsageError

    spec = cmd.spec
    if p["format"] not in ("text", "json"):
        raise VmtUsageError(f"--format {p['format']!r}: use text or json")
    if p["output"] is None:
        raise VmtUsageError("missing option '--output' / '-o'" + (" (with --batch: the folder the batch writes "
                                                                   "into)" if p["batch"] else ""))
    check_numbers(ctx, spec, p)  # the command line's own values, before any job
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
        allowed = frozenset(k for k in types_ if k not in NOT_IN_KEY | LOAD_OPTIONS and k != "ctx")
        schema = JobSchema(
            spec.name, convert=lambda name, v: convert_recipe_value(*types_[name], v),
            flag=lambda name: flag(ctx, name), allowed=allowed,
            fixed={k: "the model loads once for the whole batch" for k in LOAD_OPTIONS},
            paths=frozenset(spec.inputs),
        )
        source = str(p["batch"])
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
        assign_outputs(jobs, out_dir, p["naming"], source)
    for job in jobs:
        job.params["output"] = job.output
        where = job.where(source) if out_dir is not None else "job"
        _at(where, check_numbers, ctx, spec, job.params)
        plan.prepared[job.index] = _at(where, cmd.check_job, job.params)

    # Paths: inputs exist, outputs are valid and not inputs. Existing outputs are the resume's business here.
    created = out_dir is not None and not out_dir.exists()
    if created:
        out_dir.mkdir(exist_ok=True)  # ranks may race to create it
    try:
        _check_files_and_model(ctx, cmd, p, plan)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed check leaves no empty folder behind
        raise
    if created and p["dry_run"]:
        out_dir.rmdir()  # a dry run writes nothing
    return plan


def _check_files_and_model(ctx: typer.Context, cmd: BatchCommand, p: Params, plan: Plan) -> None:
    """Every job's paths (scaffold rules), its checks against the model's config, its estimate and its
    resume state; sets plan.inspected, estimates, keys, states and memory."""
    from vmt.backends.wan import inspect_model
    from vmt.batch import job_key, memory_estimate, resume_state
    from vmt.errors import VmtUsageError

    spec, jobs, source, out_dir = cmd.spec, plan.jobs, plan.source, plan.out_dir
    for job in jobs:
        where = job.where(source) if out_dir is not None else "job"
        overwrite = True if out_dir is not None else bool(p["overwrite"])
        _at(where, check_paths, ctx, spec, {**job.params, "overwrite": overwrite})
    plan.inspected = inspect_model(p["model"], p["revision"])  # config files only, no weights
    geometry = plan.inspected[1]
    problems = []
    for job in jobs:
        where = job.where(source) if out_dir is not None else "job"
        prepared = plan.prepared[job.index]
        _at(where, cmd.check_model_job, job.params, geometry, prepared)
        plan.estimates[job.index] = cmd.estimate(job.params, prepared, geometry)
        plan.keys[job.index] = key = job_key(job.params, NOT_IN_KEY)
        if out_dir is None:
            plan.states[job.index] = "run"
            continue
        state = resume_state(job.output, key)
        if state.kind == "todo":
            plan.states[job.index] = "run"
        elif state.kind == "done":
            plan.states[job.index] = "skip"
        elif p["overwrite"]:
            plan.states[job.index] = "redo"
        else:
            problems.append((job, state))
    if problems:
        job, state = problems[0]
        what = "was made with other parameters" if state.kind == "changed" else "is incomplete"
        more = f" ({len(problems)} jobs in all)" if len(problems) > 1 else ""
        raise VmtUsageError(f"{job.where(source)}: {job.output} {what} ({state.detail}){more}; pass --overwrite "
                            "to redo, or choose another -o folder")
    dtype = p["dtype"] if p["dtype"] != "auto" else "bfloat16"  # the GPU default
    worst = max(jobs, key=lambda j: plan.estimates[j.index]["tokens"] * plan.estimates[j.index]["cfg_branches"])
    est = plan.estimates[worst.index]
    storage = None if p.get("storage_dtype") in (None, "", "none") else p["storage_dtype"]
    guided = 0
    if est.get("dit_backward"):  # transfer: the guided forward runs to the capture block (or all blocks)
        guided = p["block"] + 1 if p.get("truncate", True) else plan.inspected[1].num_layers
    plan.memory = memory_estimate(plan.inspected[0].folder, dtype, p["offload"], est["tokens"],
                                  est["tokens"] * 4 * 16, est["cfg_branches"], storage, guided,
                                  p.get("grad_checkpointing", True))


def print_plan(plan: Plan, fmt: str, p: dict) -> None:
    """The dry run's answer on stdout: one line per job and totals, or one JSON document."""
    rows = []
    for job in plan.jobs:
        e = plan.estimates[job.index]
        rows.append({"job": job.index, "line": job.line, "output": str(job.output),
                     "action": plan.states[job.index], "prompt": job.params.get("prompt"),
                     "seed": job.params.get("seed"), **{k: e[k] for k in ("steps", "nfe", "dit_forward",
                                                                           "dit_backward")}})
    todo = [r for r in rows if r["action"] != "skip"]
    totals = {"jobs": len(rows), "to_run": len(todo), "skipped": len(rows) - len(todo),
              "nfe": sum(r["nfe"] for r in todo), "dit_forward": sum(r["dit_forward"] for r in todo),
              "dit_backward": sum(r["dit_backward"] for r in todo), "model_loads": 1 if todo else 0}
    if fmt == "json":
        doc = {"command": p["_command"], "source": plan.source,
               "output_dir": None if plan.out_dir is None else str(plan.out_dir), "model": p["model"],
               "jobs": rows, "totals": totals, "gpu_memory_estimate": plan.memory}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for r in rows:
        typer.echo(f"{r['job']:>4}  {r['action']:<4}  {r['output']}  seed {r['seed']}  steps {r['steps']}  "
                   f"NFE {r['nfe']}  DiT fwd {r['dit_forward']} bwd {r['dit_backward']}  {r['prompt']!r}")
    m = plan.memory
    typer.echo(f"{totals['to_run']} of {totals['jobs']} jobs to run ({totals['skipped']} done), one load of "
               f"{p['model']}: NFE {totals['nfe']}, DiT passes {totals['dit_forward']} forward "
               f"{totals['dit_backward']} backward; estimated peak GPU memory {m['peak_gib']} GiB "
               f"(weights {sum(v or 0 for v in m['weights_gib'].values()):.2f} GiB + activations "
               f"{m['activations_gib']} GiB)")


def run_batch(ctx: typer.Context, cmd: BatchCommand, params: dict) -> None:
    """`vmt COMMAND --batch JOBS` / `--dry-run`: plan, then (unless dry) one load and every job of this rank."""
    from vmt.batch import process_group, ranks_from_env

    params = {k: v for k, v in params.items() if k != "ctx"}

    def go() -> None:
        p = resolve_params(ctx, cmd.spec.name, params, params.get("recipe"),
                           NOT_FROM_RECIPE | frozenset(cmd.spec.outputs) | BATCH_OPTIONS)
        ranks = ranks_from_env()
        with process_group(ranks) as dist:
            plan = plan_batch(ctx, cmd, p)
            if p["dry_run"]:
                if ranks.rank == 0:
                    print_plan(plan, p["format"], {**p, "_command": cmd.spec.name})
                return
            if dist is not None:
                dist.barrier()  # every rank decided from the same files before any writes
            _execute(cmd, plan, p, ranks, dist)

    run_guarded(go, bool(params.get("debug", False)))


def _execute(cmd: BatchCommand, plan: Plan, p: dict, ranks, dist) -> None:
    from cli.common import quiet_libraries
    from vmt.batch import MANIFEST_NAME, BatchRecord, job_files, rank_device
    from vmt.errors import VmtError
    from vmt.io.atomic import output_policy
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
        backend = cmd.load_backend(p, device=rank_device(p["device"], ranks), inspected=plan.inspected)
    header["load_s"] = load_s = round(time.perf_counter() - t0, 4)
    failed = 0
    current = None  # the job in flight
    try:
        with output_policy(bool(p["overwrite"])), BatchProgress(len(mine), p["quiet"]) as bar:
            for job in mine:
                current = job
                _reset_counters(backend)
                timer, t_job = Timer(), time.perf_counter()
                extra = {"batch": {"source": plan.source, "line": job.line, "job": job.index, "rank": ranks.rank,
                                   "world_size": ranks.world, "load_s_shared": load_s,
                                   "params": plan.keys[job.index]}}
                try:
                    with job_files(job.output):
                        counts = cmd.run_job(backend, job.params, plan.prepared[job.index], timer,
                                             progress=bar.steps(job.output.name), report=False, sidecar_extra=extra)
                    row = record.set(job, "done", seconds=round(time.perf_counter() - t_job, 4),
                                     timings_s=timer.stages, compute=counts)
                except Exception as e:  # one job's failure does not stop the others; exit 1 at the end
                    failed += 1
                    msg = str(e) if isinstance(e, VmtError) else f"{type(e).__name__}: {e}"
                    row = record.set(job, "failed", error=" ".join(msg.split()))
                    print_error(f"{plan.source} line {job.line} ({job.output}): {msg}")
                current = None
                bar.finished(str(job.output), row["status"], time.perf_counter() - t_job)
                record.save()
    except (KeyboardInterrupt, Terminated) as e:
        # Whatever was running (a job, the manifest's rewrite): finished jobs stay, the one in flight is gone.
        if current is not None:
            record.set(current, "interrupted")
        record.save()
        code = e.exit_code if isinstance(e, Terminated) else 130
        lost = f"the job in flight ({current.output}) was not written" if current is not None else "no job was lost"
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
