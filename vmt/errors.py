"""Errors a user can act on, named by parameter.

The library says which parameter is wrong and why; it never names a command-line flag and never decides an
exit code. A message names a parameter with `param("guidance_scale")`: a Python caller reads
`guidance_scale must be >= 0`, the command line renders the same error as `--guidance-scale must be >= 0`
(cli/scaffold.py formats errors once) and maps the class to its exit code.

    raise VmtUsageError(f"{param('tau')} must be >= 0, got {tau}")
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MARK = "\x00"
_PARAM = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_MARK}")


def param(name: str) -> str:
    """A parameter named inside an error message (rendered by `VmtError.render`)."""
    return f"{_MARK}{name}{_MARK}"


def render(text: str, name: Callable[[str], str] = lambda p: p) -> str:
    """`text` with each parameter marked by `param` written by `name` (default: the parameter's own name)."""
    return _PARAM.sub(lambda m: name(m.group(1)), text)


class Note(str):
    """A message for the user that is no error (a value adjusted to fit, say), naming parameters with `param`.

    As a str it reads with the parameters' own names (a Python caller, a sidecar); `render(name)` writes them
    otherwise (the command line: as flags). `message` keeps the marks, for joining notes into one."""

    message: str

    def __new__(cls, message: str) -> Note:
        note = super().__new__(cls, render(message))
        note.message = message
        return note

    def render(self, name: Callable[[str], str] = lambda p: p) -> str:
        return render(self.message, name)


class VmtError(Exception):
    """A runtime failure the user can fix (bad file, missing model part)."""

    @property
    def message(self) -> str:
        """The message with its parameter marks, for wrapping (`type(e)(f"{where}: {e.message}")`)."""
        return str(self.args[0]) if self.args else ""

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order."""
        return _PARAM.findall(self.message)

    def render(self, name: Callable[[str], str] = lambda p: p) -> str:
        """The message with each named parameter written by `name` (default: the parameter's own name)."""
        return render(self.message, name)

    def __str__(self) -> str:
        return self.render()


class VmtUsageError(VmtError):
    """A bad request: an invalid value, a missing input, an existing output without overwrite."""
