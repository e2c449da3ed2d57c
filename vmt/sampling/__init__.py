"""Flow-matching sampling: the one Euler loop with step hooks, and the interventions that plug into it."""

from vmt.sampling.euler import Intervention, StepState, sample_euler
from vmt.sampling.sigmas import flow_sigmas

__all__ = ["Intervention", "StepState", "flow_sigmas", "sample_euler"]
