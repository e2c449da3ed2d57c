"""Batches of generation jobs: job files, output naming, resume decisions, manifests and the split over ranks.

A batch is one model load and many jobs. A job is the command's resolved parameters with per-job values on
top (prompt, seed, reference, any option that does not change how the model loads). This module knows nothing
about the command line: the caller passes how to convert a value to an option's type and how to check a job,
so that a job file is held to exactly the rules of a recipe and of the command line.

    jobs = read_jobs("prompts.jsonl", schema)            # typed per-job values, bounded
    assign_outputs(jobs, out_dir, "{prompt}-{sample}.mp4", "prompts.jsonl")   # sets each job.output
    state = resume_state(jobs[0].output, job_key(jobs[0].params, ignore=()))   # todo | done | changed | orphan

Pairs for `eval motion --batch` live in vmt.metrics.pairs, GPU memory estimates in vmt.backends.memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param

MANIFEST_NAME = "manifest.jsonl"
# Manifest statuses of a job whose video is there (this run wrote it, or an earlier one did).
DONE_STATUSES = ("done", "skipped")
NAMING_PRESETS = {"index": "{index:04d}.mp4", "vbench": "{prompt}-{sample}.mp4"}
DEFAULT_NAMING = "index"
NAME_FIELDS = ("index", "sample", "prompt", "seed", "reference")
MAX_NAME_BYTES = 255  # one path component on common filesystems
# Jobs one batch may expand to (lines x --seeds): far beyond any real sweep, well below what would take
# minutes and gigabytes only to plan. A larger sweep is several batches (e.g. one per seed range).
MAX_JOBS = 100_000
SEED_MAX = 2**64 - 1  # torch generators take 64-bit seeds; larger ones would wrap around
# Suffixes read as JSON Lines; anything else is a plain prompt list (one prompt a line).
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class Job:
    """One job of a batch. `values`: typed per-job parameters from the job file (prompt, seed, options);
    `line`: its 1-based line in the file (the message of every error names it); `name`: an explicit output
    name from the file, or None for the naming template."""

    index: int
    line: int
    values: dict[str, Any]
    name: str | None = None
    output: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def where(self, source: str | Path) -> str:
        return f"{source} line {self.line}"


@dataclass(frozen=True)
class JobSchema:
    """What a job line may hold for one command.

    convert(name, value) -> typed value, raising ValueError naming the expected type (the recipe conversion).
    allowed: parameter names a job may set. fixed: names that are the same for the whole batch (the model
    loads once) with the reason. paths: names whose relative values are read from the job file's folder.
    """

    command: str
    convert: Callable[[str, Any], Any]
    allowed: frozenset[str]
    fixed: Mapping[str, str] = field(default_factory=dict)
    paths: frozenset[str] = frozenset()


def parse_seeds(text: str, limit: int = MAX_JOBS) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "1,5,9-10" -> [1, 5, 9, 10]. Seeds are in [0, 2**64), not repeated, and at
    most `limit` (counted before any list is made, so "0-99999999" is refused at once)."""
    ranges: list[tuple[int, int]] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise VmtUsageError(f"{param('seeds')} {text!r}: expected seeds such as 0-4 or 1,5,9-10")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise VmtUsageError(f"{param('seeds')} {text!r}: range {a}-{b} goes backwards")
        if b > SEED_MAX:
            raise VmtUsageError(f"{param('seeds')} {text!r}: seed {b} is above {SEED_MAX} (seeds are 64-bit)")
        ranges.append((a, b))
    count = sum(b - a + 1 for a, b in ranges)
    if count > limit:
        raise VmtUsageError(f"{param('seeds')} {text!r} gives {count} seeds; a batch runs at most {limit} jobs: split the "
                            f"sweep into several batches (e.g. {param('seeds')} 0-999, then 1000-1999)")
    seeds = [s for a, b in ranges for s in range(a, b + 1)]
    if len(set(seeds)) != len(seeds):
        raise VmtUsageError(f"{param('seeds')} {text!r} repeats a seed; every seed would write the same video")
    return seeds


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a key given twice is an error (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def check_file_name(name: str, what: str) -> None:
    """An output name a person can see and a shell can pass on: no control characters (NUL, newline, ...),
    not hidden (a leading dot), not a folder. Raises VmtUsageError starting with `what`."""
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise VmtUsageError(f"{what}: output name {name!r} contains the control character {bad!r}; use printable "
                            "characters only")
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise VmtUsageError(f"{what}: output name {name!r} must be a file name inside the {param('output')} folder (no folders)")
    if name.startswith("."):
        raise VmtUsageError(f"{what}: output name {name!r} would be a hidden file; give a name that does not "
                            "start with a dot")


def _job_line(obj: Any, lineno: int, source: Path, schema: JobSchema) -> tuple[dict[str, Any], str | None]:
    """Typed values of one JSON object line (and its explicit output name)."""
    where = f"{source} line {lineno}"
    if not isinstance(obj, dict):
        raise VmtUsageError(f"{where}: expected a JSON object such as {{\"prompt\": \"...\", \"seed\": 0}}, "
                            f"got {type(obj).__name__}")
    values: dict[str, Any] = {}
    name = None
    for key, val in obj.items():
        pname = str(key).replace("-", "_")
        if pname == "output":
            if not isinstance(val, str) or not val:
                raise VmtUsageError(f"{where}: output = {val!r} must be a file name (a string)")
            check_file_name(val, where)
            name = val
            continue
        if pname in schema.fixed:
            raise VmtUsageError(f"{where}: {key!r} cannot change per job ({schema.fixed[pname]}); give "
                                f"{param(pname)} on the command line")
        if pname not in schema.allowed:
            known = ", ".join(sorted(["output", *(k.replace("_", "-") for k in schema.allowed)]))
            raise VmtUsageError(f"{where}: unknown key {key!r} for `vmt {schema.command}`; known keys: {known}")
        try:
            value = schema.convert(pname, val)
        except ValueError as e:
            raise VmtUsageError(f"{where}: {key} = {val!r} is not valid for {param(pname)}: expected "
                                f"{e}") from None
        if pname in schema.paths and value is not None and not Path(value).is_absolute():
            value = source.parent / value  # relative to the job file, wherever the command runs from
        values[pname] = value
    return values, name


def read_jobs(path: str | Path, schema: JobSchema, seeds: Sequence[int] | None = None) -> list[Job]:
    """Read a job file: JSON Lines (.jsonl, one object a line) or plain text (one prompt a line; lines
    starting with # are comments). `seeds` (from --seeds) expands every line without its own seed into one
    job per seed. Raises VmtUsageError naming the line."""
    path = Path(path)
    if path.is_dir():
        raise VmtUsageError(f"{param('batch')} {path} is a folder; give a .jsonl or .txt job file")
    if not path.is_file():
        raise VmtUsageError(f"{param('batch')} {path} not found; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VmtUsageError(f"{param('batch')} {path} is not UTF-8 text: {e}") from None
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    rows: list[tuple[int, dict[str, Any], str | None]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or (not jsonl and line.startswith("#")):
            continue
        if jsonl:
            try:
                obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise VmtUsageError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:
                raise VmtUsageError(f"{path} line {lineno}: {e}; give each key once") from None
            values, name = _job_line(obj, lineno, path, schema)
        else:
            values, name = {"prompt": line}, None
        rows.append((lineno, values, name))
        if len(rows) > MAX_JOBS:
            raise VmtUsageError(f"{param('batch')} {path} has more than {MAX_JOBS} jobs; split it into several batches")
    if not rows:
        raise VmtUsageError(f"{param('batch')} {path} has no jobs")
    expanded = sum(len(seeds) if seeds and "seed" not in values else 1 for _, values, _ in rows)
    if expanded > MAX_JOBS:
        raise VmtUsageError(f"{param('batch')} {path} with {param('seeds')} gives {expanded} jobs ({len(rows)} lines); a batch runs at "
                            f"most {MAX_JOBS}: split the lines or the seeds into several batches")
    jobs: list[Job] = []
    for lineno, values, name in rows:
        if seeds and "seed" not in values:
            if name is not None and len(seeds) > 1:
                raise VmtUsageError(f"{path} line {lineno}: an explicit output name with {param('seeds')} would write "
                                    f"{len(seeds)} videos to one file; add {{seed}} by removing \"output\" "
                                    "(the naming template) or give each seed its own line")
            first = len(jobs)  # not inside the generator: extend grows the list as it goes
            jobs.extend(Job(first + i, lineno, {**values, "seed": s}, name) for i, s in enumerate(seeds))
        else:
            jobs.append(Job(len(jobs), lineno, values, name))
    return jobs


# ---------------------------------------------------------------- naming


def naming_template(naming: str | None) -> str:
    """A preset name (index, vbench) or a template with {index} {sample} {prompt} {seed} {reference}."""
    return NAMING_PRESETS.get(naming or DEFAULT_NAMING, naming or NAMING_PRESETS[DEFAULT_NAMING])


def _safe_component(text: str) -> str:
    """A prompt as one visible file name component: path separators and control characters become "_", and
    so do leading dots (a prompt "." must not name a hidden file)."""
    text = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in text).strip()
    stripped = text.lstrip(".")
    return "_" * (len(text) - len(stripped)) + stripped


def assign_outputs(jobs: list[Job], out_dir: Path, naming: str | None, source: str | Path,
                   suffixes: Iterable[str] | None = None) -> None:
    """Set every job's output (out_dir / name) from its explicit name or the template; duplicates (of names
    or of their sidecars), names with folders, hidden or control characters, over-long names and suffixes
    outside `suffixes` are errors naming the lines. {sample} counts jobs per prompt (VBench's index:
    prompt-0.mp4 ... prompt-4.mp4)."""
    template = naming_template(naming)
    from vmt.io.atomic import sidecar_path

    per_prompt: dict[str, int] = {}
    seen: dict[str, Job] = {}
    sidecars: dict[str, Job] = {}
    for job in jobs:
        prompt = str(job.params.get("prompt", job.values.get("prompt", "")))
        sample = per_prompt.get(prompt, 0)
        per_prompt[prompt] = sample + 1
        if job.name is not None:
            name = job.name
        else:
            ref = job.params.get("reference") or job.values.get("reference")
            fields = {"index": job.index, "sample": sample, "prompt": _safe_component(prompt),
                      "seed": job.params.get("seed", job.values.get("seed")),
                      "reference": Path(ref).stem if ref else ""}
            try:
                name = template.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise VmtUsageError(f"{param('naming')} {template!r}: {e!s} is not a field; use "
                                    + ", ".join("{" + f + "}" for f in NAME_FIELDS)) from None
        check_file_name(name, job.where(source))
        if suffixes is not None and Path(name).suffix.lower() not in suffixes:
            allowed = sorted(set(suffixes), key=lambda x: (x != ".mp4", x))
            raise VmtUsageError(f"{job.where(source)}: {param('output')} {out_dir / name} must end in "
                                f"{' or '.join(allowed)} (e.g. {Path(name).with_suffix(allowed[0]).name})")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise VmtUsageError(f"{job.where(source)}: output name {name[:40]!r}... is {len(name.encode())} "
                                f"bytes; file names hold at most {MAX_NAME_BYTES} (give \"output\" or {param('naming')})")
        if (out_dir / name).is_dir():
            raise VmtUsageError(f"{job.where(source)}: output {out_dir / name} is a folder; give the job another "
                                "output name")
        if name in seen:
            raise VmtUsageError(f"{job.where(source)}: output {name!r} is also the output of line "
                                f"{seen[name].line}; give each job its own name (e.g. {param('naming')} "
                                "\"{index}-{seed}.mp4\")")
        side = sidecar_path(name).name
        if side in sidecars:
            other = sidecars[side]
            raise VmtUsageError(f"{job.where(source)}: output {name!r} and {other.output.name!r} (line "
                                f"{other.line}) would share the sidecar {side!r}; give them different stems")
        seen[name] = sidecars[side] = job
        job.output = out_dir / name


# ---------------------------------------------------------------- what a batch reads and writes


def _identity(path: Path) -> tuple[Any, ...]:
    """Keys under which two paths are the same file: the resolved path, and (device, inode) if it exists."""
    keys: list[Any] = [("path", str(Path(os.path.abspath(path)).resolve()))]
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.append(("inode", st.st_dev, st.st_ino))
    return tuple(keys)


def check_batch_files(reads: Iterable[tuple[str, Path]], writes: Iterable[tuple[str, Path]]) -> None:
    """No file a batch reads (job file, recipe, every job's reference and image) may be a file it writes (every
    job's video and sidecar, the manifest): compared by resolved path and by inode, over all jobs at once and
    whatever --overwrite says, since one job's output would otherwise replace another job's input before
    that job reads it. Reads and writes are (what, path) pairs; what names the place ("line 2 reference").
    Files inside the output folder named like vmt's temporaries are refused as inputs too."""
    from vmt.io.atomic import is_temporary

    written: dict[Any, tuple[str, Path]] = {}
    for what, path in writes:
        for key in _identity(path):
            if key in written:
                other, other_path = written[key]
                raise VmtUsageError(f"{what} {path} and {other} {other_path} are the same file; give them "
                                    "different names")
            written[key] = (what, path)
    seen: set[Any] = set()
    for what, path in reads:
        keys = _identity(path)
        if keys[0] in seen:
            continue  # the same input read by many jobs: checked once
        seen.add(keys[0])
        if is_temporary(path):
            raise VmtUsageError(f"{what} {path} is an unfinished temporary file of a vmt run, not an input; give "
                                "the finished file")
        for key in keys:
            if key in written:
                other, other_path = written[key]
                raise VmtUsageError(f"{what} {path} is also written by this batch ({other} {other_path}); inputs "
                                    f"are never replaced: move the input out of the {param('output')} folder or choose "
                                    f"another {param('output')} folder")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One batch per output folder at a time: an exclusive, non-blocking lock on the folder itself (no lock
    file to leave behind). The kernel drops it when the process ends, however it ends, so a crashed run never
    leaves the folder locked. Raises VmtError when another process holds it."""
    import fcntl

    from vmt.errors import VmtError

    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VmtError(f"another batch is writing into {folder}; wait for it to finish (its manifest.jsonl "
                           f"says how far it is) or choose another {param('output')} folder") from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- resume


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def job_key(params: Mapping[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
    """The parameters that decide a job's result, as JSON values: what a resumed run compares."""
    skip = set(ignore)
    return {k: _plain(v) for k, v in sorted(params.items()) if k not in skip}


@dataclass(frozen=True)
class ResumeState:
    """"todo" (no output yet), "done" (output and sidecar with the same parameters), "changed" (made with
    other parameters: `detail` says which), "orphan" (one of output / sidecar without the other)."""

    kind: str
    detail: str = ""


def _describe_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new), key=str)
    diffs = [f"{k.replace('_', '-')} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return shown or "same values"


def resume_state(output: Path, key: Mapping[str, Any]) -> ResumeState:
    """Whether the job that writes `output` with parameters `key` is already done."""
    from vmt.io.atomic import sidecar_path

    side = sidecar_path(output)
    has_out, has_side = output.exists(), side.exists()
    if not has_out and not has_side:
        return ResumeState("todo")
    if has_out != has_side:
        present = output if has_out else side
        return ResumeState("orphan", f"{present} exists without its {'sidecar' if has_out else 'video'}")
    try:
        doc = json.loads(side.read_text())
        recorded = doc["batch"]["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return ResumeState("changed", f"{side} was not written by a batch")
    if recorded != dict(key):
        return ResumeState("changed", _describe_diff(recorded, key))
    return ResumeState("done")


# ---------------------------------------------------------------- ranks


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: every world-th from its rank, so ranks get equal counts (+-1) in job order."""
        return list(items[self.rank::self.world])


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun (and most launchers) set them."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise VmtUsageError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise VmtUsageError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Ranks(rank, world, local)


def rank_device(device: str, ranks: Ranks) -> str:
    """--device auto under a launcher: this process's local GPU (cuda:LOCAL_RANK) when there is CUDA."""
    if device != "auto" or not ranks.distributed:
        return device
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return "cpu"


@contextlib.contextmanager
def process_group(ranks: Ranks) -> Iterator[Any]:
    """A gloo process group for the batch's bookkeeping (barrier, gathering manifest rows), or None for one
    process. Gloo: the messages are small Python objects, and it works with and without GPUs. The timeout
    is long: rank 0 waits at the end for the slowest rank's share of jobs."""
    if not ranks.distributed:
        yield None
        return
    import datetime

    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world,
                                timeout=datetime.timedelta(hours=72))
    try:
        yield dist
        # A rank with nothing left to do must not tear the group down while rank 0 still receives its rows:
        # gloo aborts the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def gather_rows(dist: Any, rows: list[dict], ranks: Ranks) -> list[dict] | None:
    """All ranks' manifest rows on rank 0 (None elsewhere); the rows of one process as they are."""
    if dist is None:
        return rows
    out: list[list[dict]] | None = [[] for _ in range(ranks.world)] if ranks.rank == 0 else None
    dist.gather_object(rows, out, dst=0)
    if out is None:
        return None
    return sorted((r for part in out for r in part), key=lambda r: r["job"])


# ---------------------------------------------------------------- manifest


def manifest_row(job: Job, status: str, rank: int = 0, **extra: Any) -> dict[str, Any]:
    """One manifest line: job index and file line, output, status (done, skipped, failed, interrupted,
    pending), the rank that ran it, seed and prompt, and what the job reported (timings, compute, error)."""
    row = {"job": job.index, "line": job.line, "output": os.path.abspath(job.output), "status": status,
           "rank": rank, "seed": job.params.get("seed"), "prompt": job.params.get("prompt")}
    reference = job.params.get("reference")
    if reference is not None:  # a transfer job: the manifest is then a list of pairs for `vmt eval motion`
        row["reference"] = os.path.abspath(reference)
    row.update(extra)
    return row


def write_manifest(path: Path, header: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> Path:
    """JSON Lines, atomically: a header line ({"batch": ...}) and one line per job in job order."""
    from vmt.io.atomic import atomic_path

    with atomic_path(path, replace=True) as tmp:
        with open(tmp, "w") as f:
            f.write(json.dumps({"batch": dict(header)}, default=str) + "\n")
            for row in rows:
                f.write(json.dumps(dict(row), default=str) + "\n")
    return path


class BatchRecord:
    """The manifest of one batch run: a row per job (`manifest_row`), in job order, with the jobs not yet run
    as "pending". One process rewrites it after every job, so an interrupted batch keeps its record; under
    torchrun each rank keeps its own rows and rank 0 gathers and writes them once, at the end (`save(final)`).
    `dist`: the process group of `process_group`, or None."""

    def __init__(self, path: Path, header: dict[str, Any], jobs: Sequence[Job], skipped: Iterable[Job],
                 ranks: Ranks, dist: Any = None):
        self.path, self.header, self.jobs, self.ranks, self.dist = Path(path), header, list(jobs), ranks, dist
        self.rows: dict[int, dict[str, Any]] = {j.index: manifest_row(j, "skipped") for j in skipped}

    def set(self, job: Job, status: str, **extra: Any) -> dict[str, Any]:
        self.rows[job.index] = row = manifest_row(job, status, self.ranks.rank, **extra)
        return row

    def complete(self) -> int:
        """Jobs done or skipped so far (this process's view)."""
        return sum(r["status"] in DONE_STATUSES for r in self.rows.values())

    def save(self, final: bool = False) -> None:
        if self.dist is None:
            self._write(list(self.rows.values()))
        elif final:
            # Every rank knows the skipped jobs; rank 0 reports them, each rank the jobs it ran.
            own = [r for r in self.rows.values() if r["status"] != "skipped" or self.ranks.rank == 0]
            gathered = gather_rows(self.dist, own, self.ranks)
            if gathered is not None:
                self._write(gathered)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        seen = {r["job"] for r in rows}
        pending = [manifest_row(j, "pending") for j in self.jobs if j.index not in seen]
        write_manifest(self.path, self.header, sorted([*rows, *pending], key=lambda r: r["job"]))
