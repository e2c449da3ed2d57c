"""Outputs that are never half-written and never clobber what they should not.

Every file is written to a hidden temporary beside its target and moved into place only when complete. The
move either replaces the target (library default, and `--overwrite`) or is exclusive: a hard link that fails
if the target appeared in the meantime (another run writing the same path), so no result is silently lost.
The policy for a whole command is set once with `output_policy(overwrite=...)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param

# True: the final move replaces an existing target; False: it refuses one (exclusive create).
_REPLACE: contextvars.ContextVar[bool] = contextvars.ContextVar("vmt_replace_outputs", default=True)


class _Moves(list):
    """The finished temporaries an open commit moves at its end: (temporary, target, replace) items.
    Weak-referenceable, so that a commit whose clean-up a signal cut short closes by itself when its frame
    is gone (Python-level signal handlers can interrupt any line, the restore of a context variable too)."""


# Inside `commit_together`: a weak reference to its moves (see `_open_commit`).
_PENDING: contextvars.ContextVar[weakref.ref | None] = contextvars.ContextVar("vmt_pending_moves", default=None)
# Every target this process moved into place, in order: what an interrupted command really wrote.
_PLACED: list[Path] = []
# Signals held back while a commit moves its files: the CLI's SIGTERM/SIGHUP and Ctrl-C.
_HELD_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the mode a plain open() would give them (0666 less the umask), not mkstemp's 0600: the output is
# the input of the next tool in a pipeline, often run by another user or in a container.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def output_policy(overwrite: bool) -> Iterator[None]:
    """Within the block, atomic writes replace existing targets only when `overwrite` is true."""
    token = _REPLACE.set(overwrite)
    try:
        yield
    finally:
        _REPLACE.reset(token)


def sidecar_path(output: str | os.PathLike) -> Path:
    """The provenance file of an output: `out.mp4` -> `out.json` (`out.json` -> `out.json.json`)."""
    p = Path(output)
    return p.with_name(p.name + ".json") if p.suffix == ".json" else p.with_suffix(".json")


def check_output_path(output: str | os.PathLike, overwrite: bool, *, sidecar: bool = True,
                      suffixes: Iterable[str] | None = None, what: str = "output") -> Path:
    """Validate an output path before any expensive work; raise VmtUsageError naming the fix.

    Refuses a suffix outside `suffixes` (when given), an existing output (and its JSON sidecar) without
    `overwrite`, a missing or unwritable folder, and a path that is a directory.
    """
    p = Path(output)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise VmtUsageError(f"{what} {p} is a directory; give a file path such as {p / 'out.mp4'}")
    if suffixes is not None:
        allowed = sorted(set(suffixes), key=lambda x: (x != ".mp4", x))  # the usual container first
        if p.suffix.lower() not in allowed:
            example = p.with_suffix(allowed[0]) if p.name else f"out{allowed[0]}"
            raise VmtUsageError(f"{what} {p} must end in {' or '.join(allowed)} (e.g. {example})")
    if not parent.is_dir():
        raise VmtUsageError(f"{what} folder {parent} does not exist; create it first (with any missing "
                            "folders above it)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VmtUsageError(f"{what} folder {parent} is not writable; choose another path")
    if not overwrite:
        for q in [p, sidecar_path(p)] if sidecar else [p]:
            if q.exists():
                raise VmtUsageError(f"{q} already exists; pass {param('overwrite')} to replace it")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_not_inputs(outputs: dict[str, Path], inputs: dict[str, Path]) -> None:
    """No output may be the same file as an input (resolved path or inode) or as another output.

    `outputs` / `inputs` map a name for messages (such as "output", or the flag the command line shows) to a
    path.
    """
    outs = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    for name, out in outs:
        for in_name, src in inputs.items():
            if src is not None and _same_file(out, Path(src)):
                raise VmtUsageError(f"{name} {out} is the same file as the input {in_name} {src}; "
                                    "write the output to another path (inputs are never replaced)")
    for i, (name_a, a) in enumerate(outs):
        for name_b, b in outs[i + 1:]:
            if _same_file(a, b):
                raise VmtUsageError(f"{name_a} {a} and {name_b} {b} are the same file; give them different paths")


def placed_count() -> int:
    """How many files this process has moved into place so far (a mark for `placed_since`)."""
    return len(_PLACED)


def placed_since(mark: int) -> list[Path]:
    """The targets moved into place since `placed_count()` returned `mark`, in order."""
    return list(_PLACED[mark:])


def _finalize(tmp: Path, target: Path, replace: bool | None) -> None:
    """Move the finished temporary onto the target: replace it, or refuse one that exists (None: the policy)."""
    os.chmod(tmp, _FILE_MODE)
    if _REPLACE.get() if replace is None else replace:
        os.replace(tmp, target)
        _PLACED.append(target)
        return
    try:
        os.link(tmp, target)  # atomic create-if-absent: fails if another writer got there first
    except FileExistsError:
        raise VmtUsageError(f"{target} appeared while this run was writing it (another run?); it was left "
                            f"as it is. Pass {param('overwrite')} to replace it, or choose another "
                            "path") from None
    except OSError:
        # Filesystems without hard links: best effort, still never replacing a file seen to exist.
        if target.exists():
            raise VmtUsageError(f"{target} appeared while this run was writing it; it was left as it is. Pass "
                                f"{param('overwrite')} to replace it") from None
        os.replace(tmp, target)
        _PLACED.append(target)
        return
    _PLACED.append(target)
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, replace: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto `target` only on success.

    `replace`: whether the move may replace an existing target; None follows `output_policy` (files a run
    rewrites as it goes, such as checkpoints in a run folder, pass True).
    The temporary keeps the target's suffix so tools that infer a format from it (ffmpeg) still work.
    On any exception, including KeyboardInterrupt and the CLI's SIGTERM/SIGHUP exception, the temporary is
    removed and the target untouched.
    """
    target = Path(target)
    tmp_path: Path | None = None
    handed_over = False
    try:
        # Held: a signal between mkstemp's return and the assignment would leave the temporary unknown.
        with signals_held():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}",
                                       dir=target.parent or ".")
            os.close(fd)
            tmp_path = Path(tmp)
        yield tmp_path
        pending = _open_commit()
        if pending is not None:  # inside commit_together: moved with the others at its end
            pending.append((tmp_path, target, replace))
            handed_over = True
        else:
            with signals_held():  # the move and its record in _PLACED: what an interrupted command reports
                _finalize(tmp_path, target, replace)
    finally:
        if tmp_path is not None and not handed_over:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a temporary of `atomic_path` (`.<stem>.<random>.part<suffix>`)."""
    name = Path(path).name
    return name.startswith(".") and ".part" in name


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP for the duration; one that arrived meanwhile is delivered at the
    end, to the handler that was in place (Ctrl-C's KeyboardInterrupt, the CLI's `Terminated`, or the
    default action). A Python-level hold, not a signal mask: a mask is per thread, and the kernel may hand a
    process signal to any of torch's or ffmpeg's threads, whose handler call would still run here. Outside
    the main thread signals cannot be handled here at all, so nothing is changed."""
    arrived: list[int] = []

    def record(signum, frame):
        arrived.append(signum)

    previous: dict[int, Any] = {}
    try:
        try:
            for s in _HELD_SIGNALS:
                previous[s] = signal.signal(s, record)
        except ValueError:  # not the main thread: nothing to hold
            _restore(previous, record)
            previous.clear()
        yield
    finally:
        try:
            _restore(previous, record)
        finally:
            _restore(previous, record)  # again, when a signal interrupted the first pass halfway
        if arrived:
            signal.raise_signal(arrived[0])  # its handler runs now, as if it had just arrived


def _restore(previous: dict[int, Any], record: Any) -> None:
    for s, h in previous.items():
        if signal.getsignal(s) is record:
            signal.signal(s, h)


@contextlib.contextmanager
def commit_together() -> Iterator[list[Path]]:
    """Files written with `atomic_path` inside the block (a video and its sidecar) appear together or not at
    all. Each is finished as a temporary; at the end of the block all are moved into place in the order they
    were written, with SIGINT, SIGTERM and SIGHUP held back until the last move (a signal then arrives after
    the commit, which is complete). If a move fails (an exclusive target appeared meanwhile), the files this
    commit already placed are removed again. An error or signal inside the block leaves no file. Yields the
    list of targets placed, filled at the end. Only a SIGKILL or a power cut between the moves can leave the
    first file without the later ones: the sidecar is written last, so a video without its sidecar is known
    to be incomplete."""
    moves = _Moves()
    placed: list[Path] = []
    previous = _PENDING.get()
    try:
        _PENDING.set(weakref.ref(moves))
        try:
            yield placed
        finally:
            _restore_pending(previous)
        with signals_held():
            try:
                for tmp, target, replace in moves:
                    _finalize(tmp, target, replace)
                    placed.append(target)
            except BaseException:
                for target in placed:
                    with contextlib.suppress(OSError):
                        target.unlink()
                    _PLACED.remove(target)
                placed.clear()
                raise
    finally:
        _restore_pending(previous)  # again: a signal may have landed between the set and the inner `try`
        for tmp, _, _ in moves:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _open_commit() -> _Moves | None:
    """The moves of the innermost open `commit_together`, or None."""
    ref = _PENDING.get()
    return None if ref is None else ref()


def _restore_pending(value: weakref.ref | None) -> None:
    """Put back the commit that was open before (None: none). A signal that lands here is let through only
    after the restore (and if it lands before this runs, the weak reference dies with the commit's frame)."""
    landed: BaseException | None = None
    while True:
        try:
            _PENDING.set(value)
            break
        except BaseException as e:  # noqa: B036 - re-raised below, after the restore
            landed = landed or e
    if landed is not None:
        raise landed


def write_json_atomic(path: str | os.PathLike, data: Any, *, replace: bool | None = None) -> Path:
    """Write `data` as indented JSON to `path` atomically (`replace` as in `atomic_path`)."""
    path = Path(path)
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path

