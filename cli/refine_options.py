"""Predict-and-Perturb options shared by `vmt refine` and `vmt transfer --refine`: declarations, validation,
the intervention and its out.json block. Cheap to import (no torch at module level)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.scaffold import Range

PANEL = "Refinement"

# Numbers the scaffold checks before any work (the library re-checks what it is given: check_gate).
PNP_RANGES = {"tau": Range(0, inf_ok=True), "certain_fraction": Range(0, 1, lo_open=True),
              "p_norm": Range(1, inf_ok=True)}

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


def resolve_plan(text: str, steps: int):
    """The P&P plan for a `steps`-step schedule. The keyword "default" is clipped to the schedule; an
    explicit plan that goes beyond it is an error."""
    from vmt.sampling.pnp import parse_plan

    plan = parse_plan(text)
    if text.strip().lower() == "default":
        return plan.clipped(steps)
    return plan.validate(steps)


def check_refine_params(p: dict[str, Any], steps: int):
    """Validate --plan/--tau/--certain-fraction/--p-norm (and the sampling modes --grid/--noise/--arithmetic/
    --cfg-rule) in the resolved params `p`; returns the plan."""
    from vmt.sampling.pnp import check_gate

    plan = resolve_plan(p["plan"], steps)
    check_gate(p["tau"], p["certain_fraction"], p["p_norm"])
    if "grid" in p:  # before any model loads
        from vmt.generate import check_modes

        check_modes(grid=p["grid"], noise=p["noise"], arithmetic=p["arithmetic"], cfg_rule=p["cfg_rule"])
    return plan


def make_pnp(plan, p: dict[str, Any], sync_cuda: bool = False):
    """The PredictPerturb intervention for `plan` with the gate from `p`, or None for an empty plan."""
    if plan.empty:
        return None
    from vmt.sampling.pnp import PredictPerturb

    return PredictPerturb(plan, p["tau"], p["certain_fraction"], p["p_norm"], seed=p["seed"], sync_cuda=sync_cuda)


def refine_summary(pnp, steps: int, nfe: int, denoise_s: float) -> dict:
    """The `pnp` block of out.json: plan, NFE (planned, used, ratio to plain sampling), certain fraction per
    refined step, and the denoising time split into refined and plain steps."""
    if pnp is None:
        return {"plan": "none", "nfe": nfe, "nfe_ratio": round(nfe / steps, 4), "time_denoise_s": denoise_s}
    doc = pnp.summary(steps, nfe)
    doc["nfe"] = nfe
    doc["nfe_ratio"] = round(nfe / steps, 4)
    doc["time_denoise_s"] = denoise_s
    doc["time_plain_steps_s"] = round(max(0.0, denoise_s - doc["time_refined_steps_s"]), 4)
    return doc


def pnp_progress(state) -> dict[str, str]:
    """Progress-bar fields the step's interventions report (`StepState.summary`: P&P's inner iterations and
    certain fraction on a refined step; empty otherwise)."""
    return dict(state.summary)
