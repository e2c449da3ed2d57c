"""Predict-and-Perturb and sampling-mode options shared by `vmt refine` and `vmt transfer --refine`: their
declarations and the progress-bar fields. Their checks, the intervention and its out.json block live in
vmt.runs.shared. Cheap to import (no torch at module level)."""

from __future__ import annotations

from typing import Annotated

import typer


PANEL = "Refinement"


PlanOpt = Annotated[str, typer.Option("--plan", help="P&P inner iterations per outer step: \"FIRST-LAST:K,...\" "
                                      "(0-based, inclusive), sigma ranges \"HIGH-LOW:K\" with decimals (the steps "
                                      "whose sigma lies in the range: any schedule length), \"default\" "
                                      "(2-5:3,6-14:1) or \"none\" (plain Euler).", rich_help_panel=PANEL)]
TauOpt = Annotated[float, typer.Option("--tau", help="Uncertainty gate: voxels whose clean estimate changes less "
                                       "than tau (mean |dx0| over channels) keep their update; 0 refines every "
                                       "voxel, inf none.", rich_help_panel=PANEL)]
CertainFractionOpt = Annotated[float, typer.Option("--certain-fraction", help="Stop a step's inner loop once more "
                                                   "than this fraction of voxels is certain (1 = never stop "
                                                   "early).", rich_help_panel=PANEL)]
PNormOpt = Annotated[float, typer.Option("--p-norm", help="Norm of the gate's change over channels "
                                         "(||dx0||_p / channels).", rich_help_panel=PANEL)]

SAMPLING = "Sampling parity"
GridOpt = Annotated[str, typer.Option("--grid", help="model: step through the model folder's own scheduler grid "
                                      "and feed its timesteps (the releases) | euler: diffusers' FlowMatchEuler "
                                      "grid, timesteps 1000*sigma.", rich_help_panel=SAMPLING)]
NoiseOpt = Annotated[str, typer.Option("--noise", help="pipeline: start latent and P&P perturbations from one "
                                       "generator on the execution device (the release's draws for a seed) | "
                                       "portable: start noise drawn on the CPU (same on any device).",
                                       rich_help_panel=SAMPLING)]
ArithmeticOpt = Annotated[str, typer.Option("--arithmetic", help="float32: cast the velocity to float32 before "
                                            "the update | release: sigma*v in the model dtype (bf16) before "
                                            "adding to the float32 latent, as the release.",
                                            rich_help_panel=SAMPLING)]
CfgRuleOpt = Annotated[str, typer.Option("--cfg-rule", help="diffusers: CFG on iff --guidance-scale > 1 (the "
                                         "release; two-expert models then use each expert's scale) | per-expert: "
                                         "each expert applies CFG when its own scale != 1.",
                                         rich_help_panel=SAMPLING)]


def pnp_progress(state) -> dict[str, str]:
    """Progress-bar fields the step's interventions report (`StepState.summary`: P&P's inner iterations and
    certain fraction on a refined step; empty otherwise)."""
    return dict(state.summary)
