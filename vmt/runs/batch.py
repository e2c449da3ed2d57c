"""The batch engine: many jobs of one run request kind, every job checked before any weights load, then one
model load and every job of this process.

    batch = Batch(RefineRequest, shared, jobs_file=Path("prompts.jsonl"), out=Path("out"), seeds="0-4")
    batch.read()                     # jobs typed by the request's fields, named, reads checked against writes
    for job in batch.check(): ...    # each job's request checked, against the model's config files too
    batch.prepare()                  # memory estimate, folder lock, run / skip / redo per job (resume)
    result = batch.execute()         # one load, this rank's jobs, the manifest

A job is the request's fields: the batch's shared values (the command line, a recipe) with the job line's on
top; the model fields are the same for every job (the model loads once). A job kind is a request class
(vmt.runs) with a `job_kind` class attribute (a JobKind) and the methods check() -> prepared,
check_model(geometry), estimate(prepared, geometry), load(device, inspected) and run_on(backend, output,
prepared, timer, ...). Under torchrun the jobs still to run are split over the ranks and rank 0 writes the
manifest. Nothing is printed: a `BatchWatcher` hears what happens. Imports no torch at module level.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vmt.batch import (
    MANIFEST_NAME, BatchRecord, Job, JobSchema, Ranks, assign_outputs, check_batch_files, folder_lock, job_key,
    parse_seeds, rank_device, read_jobs, resume_state,
)
from vmt.errors import VmtError, VmtUsageError, param
from vmt.runs.fields import convert_value, request_from, value_types
from vmt.runs.shared import WanModelOptions

# Fields that decide how the model loads: one value for the whole batch.
LOAD_OPTIONS = frozenset(f.name for f in fields(WanModelOptions))
# Values that say how to run, not what to compute: never per job, not compared when a batch resumes.
RUN_OPTIONS = frozenset({"recipe", "output", "overwrite", "quiet", "debug"})
BATCH_OPTIONS = frozenset({"batch", "seeds", "naming", "dry_run", "format"})
NOT_IN_KEY = RUN_OPTIONS | BATCH_OPTIONS


@dataclass(frozen=True)
class JobKind:
    """What the batch engine needs to know of a request class beyond its fields (its `job_kind`)."""

    command: str  # the command it is: recipe table, sidecars and manifests
    required: tuple[str, ...] = ("prompt",)  # per job: from the job line or the shared values
    inputs: Mapping[str, str] = field(default_factory=dict)  # input file fields -> "file" | "dir"


class BatchWatcher:
    """What a batch tells its caller as it runs (progress bars, messages); every method does nothing here."""

    def loading(self, model: str) -> contextlib.AbstractContextManager:
        """Around the model load."""
        return contextlib.nullcontext()

    def running(self, jobs: int) -> contextlib.AbstractContextManager:
        """Around this process's `jobs` jobs."""
        return contextlib.nullcontext()

    def job(self, job: Job, steps: int, label: str) -> contextlib.AbstractContextManager:
        """Around one job; yields its per-step progress(done, total, info) callback, or None."""
        return contextlib.nullcontext()

    def finished(self, job: Job, status: str, seconds: float) -> None:
        """A job ended: done or failed."""

    def failed(self, job: Job, error: Exception) -> None:
        """A job failed (the batch goes on with the others)."""

    def error_text(self, error: Exception) -> str:
        """How a failed job's error is written into the manifest."""
        return str(error) if isinstance(error, VmtError) else f"{type(error).__name__}: {error}"


@dataclass
class BatchResult:
    written: int
    failed: int
    already_done: int
    load_s: float
    manifest: Path


def _at(where: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a check; its error gets the job's place (file and line) in front."""
    try:
        return fn(*args)
    except VmtError as e:
        raise type(e)(f"{where}: {e.message}") from None


def _check_input(name: str, path: Path, kind: str) -> None:
    if not path.exists():
        raise VmtUsageError(f"{param(name)} {path} not found; check the path")
    if kind == "file" and path.is_dir():
        raise VmtUsageError(f"{param(name)} {path} is a folder; give a file")
    if kind == "dir" and not path.is_dir():
        raise VmtUsageError(f"{param(name)} {path} is a file; give a folder")


@dataclass
class Batch:
    """One batch of `request` jobs. `shared`: the values every job starts from (request fields and the run
    options recorded in sidecars); `jobs_file`: the job file, or None for the dry run of a single run (one
    job writing `out`); `out`: the output folder (or that file)."""

    request: type
    shared: Mapping[str, Any]
    jobs_file: Path | None
    out: Path
    seeds: str | None = None
    naming: str = "index"
    overwrite: bool = False
    dry_run: bool = False
    ranks: Ranks = field(default_factory=Ranks)
    dist: Any = None
    watcher: BatchWatcher = field(default_factory=BatchWatcher)
    command: list[str] | None = None  # the command line, for the sidecars

    jobs: list[Job] = field(default_factory=list, init=False)
    prepared: dict[int, Any] = field(default_factory=dict, init=False)
    states: dict[int, str] = field(default_factory=dict, init=False)  # job index -> run | skip | redo
    keys: dict[int, dict] = field(default_factory=dict, init=False)
    estimates: dict[int, dict] = field(default_factory=dict, init=False)
    inspected: Any = field(default=None, init=False)
    memory: dict[str, Any] = field(default_factory=dict, init=False)
    record: BatchRecord | None = field(default=None, init=False)
    lost: str | None = field(default=None, init=False)  # set when a signal stopped execute()

    @property
    def source(self) -> str:
        return "command line" if self.jobs_file is None else str(self.jobs_file)

    @property
    def out_dir(self) -> Path | None:
        return None if self.jobs_file is None else self.out

    @property
    def todo(self) -> list[Job]:
        return [j for j in self.jobs if self.states[j.index] != "skip"]

    def make(self, values: Mapping[str, Any]) -> Any:
        """The request of a job (or of the shared values) from its values."""
        return request_from(self.request, values)

    # ---------------------------------------------------------------- planning (no model)

    def read(self) -> None:
        """Read the jobs, resolve their values and output names, and check what the batch reads against what
        it writes (all cheap: no model). The per-job checks follow in `check`."""
        if self.jobs_file is None:  # --dry-run of a single run: one job, the output as given
            if self.seeds is not None:
                raise VmtUsageError(f"{param('seeds')} needs {param('batch')}")
            self.jobs = [Job(0, 0, {}, output=self.out)]
        else:
            self._check_folder()
            types = value_types(self.request)
            schema = JobSchema(
                self.request.job_kind.command, convert=lambda name, v: convert_value(*types[name], v),
                allowed=frozenset(types) - LOAD_OPTIONS,
                fixed={k: "the model loads once for the whole batch" for k in LOAD_OPTIONS},
                paths=frozenset(self.request.job_kind.inputs),
            )
            # Before reading it: a job file that is this batch's manifest would be replaced by it.
            check_batch_files([(param("batch"), self.jobs_file)], [("the manifest", self.out / MANIFEST_NAME)])
            self.jobs = read_jobs(self.jobs_file, schema, parse_seeds(self.seeds) if self.seeds else None)
        for job in self.jobs:
            values = {k: v for k, v in self.shared.items() if k not in BATCH_OPTIONS}
            values.update(job.values)
            for name in self.request.job_kind.required:
                if values.get(name) is None:
                    raise VmtUsageError(f"{job.where(self.source)}: no {name}; give \"{name}\" on the line or "
                                        f"{param(name)} for the whole batch")
            job.params = values
        if self.out_dir is not None:
            from vmt.io.video import VIDEO_WRITE_SUFFIXES

            assign_outputs(self.jobs, self.out, self.naming, self.source, VIDEO_WRITE_SUFFIXES)
            self._check_reads_and_writes()
        for job in self.jobs:
            job.params["output"] = job.output

    def _check_folder(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise VmtUsageError(f"{param('output')} {self.out} is a file; with {param('batch')}, it is the folder "
                                "the batch writes into")
        if not self.out.parent.is_dir():
            raise VmtUsageError(f"{param('output')} folder {self.out.parent} does not exist; create it first")
        writable = self.out if self.out.is_dir() else self.out.parent
        if not os.access(writable, os.W_OK | os.X_OK):
            raise VmtUsageError(f"{param('output')} folder {writable} is not writable; choose another folder")

    def _check_reads_and_writes(self) -> None:
        """Every file the batch reads against every file it writes, over all jobs (vmt.batch.check_batch_files)."""
        from vmt.io.atomic import sidecar_path

        reads: list[tuple[str, Path]] = [(param("batch"), self.jobs_file)]
        recipe = self.shared.get("recipe")
        if recipe is not None and Path(recipe).is_file():
            reads.append((param("recipe"), Path(recipe)))
        writes: list[tuple[str, Path]] = [("the manifest", self.out / MANIFEST_NAME)]
        for job in self.jobs:
            where = job.where(self.source)
            for name, path in self._inputs(job):
                reads.append((f"{where}: {name}", path))
            writes += [(f"{where}: output", job.output), (f"{where}: sidecar", sidecar_path(job.output))]
        check_batch_files(reads, writes)

    def _inputs(self, job: Job) -> Iterator[tuple[str, Path]]:
        for name in self.request.job_kind.inputs:
            values = job.params.get(name)
            for v in values if isinstance(values, list) else [values]:
                if v is not None:
                    yield name, Path(v).expanduser()

    def check(self) -> Iterator[Job]:
        """Each job's request checked (values, inputs, the model's config files), with its estimate and its
        resume key, yielded as soon as it is checked (a dry run prints it then). The model's config is read
        once, before the first job's model check. Creates the output folder of a real batch."""
        from vmt.backends.wan import inspect_model

        out_dir = self.out_dir
        created = out_dir is not None and not out_dir.exists() and not self.dry_run
        if created:
            out_dir.mkdir(exist_ok=True)  # ranks may race to create it
        digests: dict[str, str] = {}
        failed = True
        try:
            for job in self.jobs:
                where = job.where(self.source) if out_dir is not None else "job"
                request = self.make(job.params)
                self.prepared[job.index] = prepared = _at(where, request.check)
                for name, path in self._inputs(job):
                    _at(where, _check_input, name, path, self.request.job_kind.inputs[name])
                if self.inspected is None:
                    # config files only, no weights
                    self.inspected = inspect_model(self.shared["model"], self.shared.get("revision"))
                _at(where, request.check_model, self.inspected[1])
                self.estimates[job.index] = request.estimate(prepared, self.inspected[1])
                self.keys[job.index] = {**job_key(job.params, NOT_IN_KEY), **self._content_key(job, digests)}
                yield job
            failed = False
        finally:
            if created and failed and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failed check leaves no empty folder behind

    def _content_key(self, job: Job, digests: dict[str, str]) -> dict[str, Any]:
        """What a job's result depends on beyond its values: the model folder's content (its fingerprint) and
        each input file's sha256, so that a resumed batch redoes a job whose model or reference changed at the
        same path."""
        from vmt.io.digest import file_digest

        def digest(path: Any) -> str:  # many jobs read one reference: hashed once (by resolved path)
            key = str(Path(path).resolve())
            if key not in digests:
                digests[key] = file_digest(path)
            return digests[key]

        inputs: dict[str, Any] = {}
        for name in self.request.job_kind.inputs:
            values = job.params.get(name)
            if isinstance(values, list):
                inputs[name] = [digest(v) for v in values]
            elif values is not None:
                inputs[name] = digest(values)
        return {"model_fingerprint": self.inspected[0].fingerprint, "input_sha256": inputs}

    def decide(self, job: Job) -> Any:
        """Run, skip (done with the same values and content) or redo (overwrite) one job; returns the resume
        state when the job was made with other values or is incomplete and there is no overwrite."""
        if self.out_dir is None:
            self.states[job.index] = "run"
            return None
        state = resume_state(job.output, self.keys[job.index])
        if state.kind in ("todo", "done"):
            self.states[job.index] = "run" if state.kind == "todo" else "skip"
            return None
        if self.overwrite:
            self.states[job.index] = "redo"
            return None
        return state

    def not_resumable(self, problems: list) -> VmtUsageError:
        job, state = problems[0]
        what = "was made with other parameters" if state.kind == "changed" else "is incomplete"
        more = f" ({len(problems)} jobs in all)" if len(problems) > 1 else ""
        return VmtUsageError(f"{job.where(self.source)}: {job.output} {what} ({state.detail}){more}; pass "
                             f"{param('overwrite')} to redo, or choose another {param('output')} folder")

    def estimate_memory(self) -> None:
        """The batch's GPU memory: the job with the most tokens (times CFG branches), on the model's files."""
        from vmt.backends.memory import memory_estimate

        s = self.shared
        dtype = s["dtype"] if s["dtype"] != "auto" else "bfloat16"  # the GPU default
        worst = max(self.jobs, key=lambda j: self.estimates[j.index]["tokens"] * self.estimates[j.index]["cfg_branches"])
        est = self.estimates[worst.index]
        storage = None if s.get("storage_dtype") in (None, "", "none") else s["storage_dtype"]
        guided = 0
        if est.get("dit_backward"):  # transfer: the guided forward runs to the capture block (or all blocks)
            guided = s["block"] + 1 if s.get("truncate", True) else self.inspected[1].num_layers
        self.memory = memory_estimate(self.inspected[0].folder, dtype, s["offload"], est["tokens"],
                                      est["tokens"] * 4 * 16, est["cfg_branches"], storage, guided,
                                      s.get("grad_checkpointing", True))

    def plan_rows(self) -> Iterator[dict[str, Any]]:
        """The dry run: each job checked and decided as the run would, as a row (job, line, output, action,
        prompt, seed, steps, NFE, DiT passes), yielded as soon as it is; then `totals()` and `memory`."""
        for job in self.check():
            problem = self.decide(job)
            if problem is not None:  # as the run would: this job cannot resume without overwrite
                raise self.not_resumable([(job, problem)])
            e = self.estimates[job.index]
            yield {"job": job.index, "line": job.line, "output": str(job.output), "action": self.states[job.index],
                   "prompt": job.params.get("prompt"), "seed": job.params.get("seed"),
                   **{k: e[k] for k in ("steps", "nfe", "dit_forward", "dit_backward")}}
        self.estimate_memory()

    def totals(self) -> dict[str, int]:
        todo = [j.index for j in self.jobs if self.states.get(j.index, "skip") != "skip"]
        totals = {"jobs": len(self.states), "to_run": len(todo), "skipped": len(self.states) - len(todo)}
        for k in ("nfe", "dit_forward", "dit_backward"):
            totals[k] = sum(self.estimates[i][k] for i in todo)
        totals["model_loads"] = 1 if todo else 0
        return totals

    # ---------------------------------------------------------------- running

    def prepare(self, held: contextlib.ExitStack) -> None:
        """Every job checked, the memory estimated, the output folder locked for the batch (held by `held`;
        under torchrun rank 0 locks and every rank learns whether it could), every job's action decided (jobs
        that cannot resume without overwrite are one error naming the first and counting them)."""
        for _ in self.check():
            pass
        self.estimate_memory()
        error = None
        if self.ranks.rank == 0:
            try:
                held.enter_context(folder_lock(self.out))
            except VmtError as e:
                error = e.message
        if self.dist is not None:
            box = [error]
            self.dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise VmtError(error)
        problems = [(job, state) for job in self.jobs if (state := self.decide(job)) is not None]
        if problems:
            raise self.not_resumable(problems)
        if self.dist is not None:
            self.dist.barrier()  # every rank decided from the same files before any writes

    def complete_on_disk(self) -> int:
        """Jobs whose video and sidecar are in the output folder with this batch's values: what every process
        of an interrupted torchrun batch finished (each rank knows only its own share)."""
        return sum(resume_state(job.output, self.keys[job.index]).kind == "done"
                   for job in self.jobs if job.index in self.keys)

    def execute(self) -> BatchResult:
        """Load the model once and run this process's jobs, recording each in the manifest. A failed job does
        not stop the others. A signal (KeyboardInterrupt or any BaseException) keeps the finished jobs, marks
        the one in flight (`lost` says what happened to it) and is raised again."""
        from vmt.io.atomic import output_policy, placed_count
        from vmt.runtime import Timer

        mine = self.ranks.share(self.todo)
        header = {"command": self.request.job_kind.command, "source": self.source, "jobs": len(self.jobs),
                  "world_size": self.ranks.world, "model": self.shared["model"],
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        skipped = [j for j in self.jobs if self.states[j.index] == "skip"]
        self.record = record = BatchRecord(self.out / MANIFEST_NAME, header, self.jobs, skipped, self.ranks, self.dist)
        if not mine:
            header["load_s"] = 0.0
            record.save(final=True)
            return BatchResult(0, 0, len(skipped), 0.0, record.path)
        t0 = time.perf_counter()
        with self.watcher.loading(self.shared["model"]):
            backend = self.make(self.shared).load(device=rank_device(self.shared["device"], self.ranks),
                                                  inspected=self.inspected)
        header["load_s"] = load_s = round(time.perf_counter() - t0, 4)
        failed = 0
        current, mark = None, placed_count()  # the job in flight, and what was committed before it
        try:
            with output_policy(self.overwrite), self.watcher.running(len(mine)):
                for job in mine:
                    current, mark = job, placed_count()
                    status = self._run_job(backend, job, load_s, Timer())
                    failed += status == "failed"
                    current = None
                    record.save()
        except BaseException as e:
            if isinstance(e, Exception):
                raise
            self._interrupted(current, mark)
            raise
        record.save(final=True)
        return BatchResult(len(mine) - failed, failed, len(self.jobs) - len(self.todo), load_s, record.path)

    def _run_job(self, backend: Any, job: Job, load_s: float, timer: Any) -> str:
        """One job on the loaded model; its video and sidecar are committed together. Returns its status."""
        _reset_counters(backend)
        t_job = time.perf_counter()
        extra = {"batch": {"source": self.source, "line": job.line, "job": job.index, "rank": self.ranks.rank,
                           "world_size": self.ranks.world, "load_s_shared": load_s,
                           "params": self.keys[job.index]}}
        try:
            request = self.make(job.params)
            with self.watcher.job(job, request.steps, request.progress_label) as progress:
                counts = request.run_on(backend, job.output, self.prepared[job.index], timer, progress,
                                        record=job.params, command=self.command, sidecar_extra=extra)
            row = self.record.set(job, "done", seconds=round(time.perf_counter() - t_job, 4),
                                  timings_s=timer.stages, compute=counts)
        except Exception as e:  # one job's failure does not stop the others
            row = self.record.set(job, "failed", error=" ".join(self.watcher.error_text(e).split()))
            self.watcher.failed(job, e)
        self.watcher.finished(job, row["status"], time.perf_counter() - t_job)
        return row["status"]

    def _interrupted(self, current: Job | None, mark: int) -> None:
        """Whatever was running (a job, the manifest's rewrite): finished jobs stay, the one in flight is gone,
        unless the signal waited for its commit (then it is whole, and done)."""
        from vmt.io.atomic import placed_since, sidecar_path

        self.lost = "no job was lost"
        if current is not None:
            committed = {str(x) for x in placed_since(mark)}
            if {str(current.output), str(sidecar_path(current.output))} <= committed:
                self.record.set(current, "done", seconds=None, note="finished as the signal arrived")
            else:
                self.record.set(current, "interrupted")
                self.lost = f"the job in flight ({current.output}) was not written"
        self.record.save()


def _reset_counters(backend: Any) -> None:
    """Compute counts and the device's peak memory per job, not per process (the model stays loaded)."""
    for f in fields(backend.counts):
        setattr(backend.counts, f.name, 0)
    if backend.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(backend.device)
