"""Flow-matching sampling: the one Euler loop with step hooks, and the interventions that plug into it.

Its names are imported on use, so that `vmt.sampling.modes` (plain names of the sampling modes) stays free of
torch for the command line's checks.
"""

__all__ = ["Intervention", "StepState", "flow_sigmas", "sample_euler"]


def __getattr__(name: str):
    if name in ("Intervention", "StepState", "sample_euler"):
        from vmt.sampling import euler

        return getattr(euler, name)
    if name == "flow_sigmas":
        from vmt.sampling.sigmas import flow_sigmas

        return flow_sigmas
    raise AttributeError(f"module 'vmt.sampling' has no attribute {name!r}")
