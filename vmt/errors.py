"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""

from __future__ import annotations


class VmtError(Exception):
    """A runtime failure the user can fix (bad file, missing model part). Exit code 1."""

    exit_code = 1


class VmtUsageError(VmtError):
    """Bad arguments or options (invalid value, existing output without --overwrite). Exit code 2."""

    exit_code = 2
