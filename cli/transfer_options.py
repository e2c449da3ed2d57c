"""FastVMT's SDEdit strength and guidance options, shared by `vmt transfer` and `vmt longgen sample --reference`
(the fields of vmt.runs.shared.GuidanceOptions). `guidance_options(panel)` gives their declarations under a help
panel of the command's choosing:

    G = guidance_options("Guidance")
    def transfer(..., amf: G.amf = "windowed", ...)

Cheap to import (no torch at module level)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer


def guidance_options(panel: str, strength_panel: str | None = None) -> SimpleNamespace:
    """Each option's Annotated type by field name; the guidance options in `panel`, --strength in
    `strength_panel` (None: the command's general options)."""

    def opt(kind, *names: str, help: str, where: str | None = panel):
        return Annotated[kind, typer.Option(*names, help=help, rich_help_panel=where)]

    return SimpleNamespace(
        strength=opt(float, "--strength", help="SDEdit denoising strength in (0, 1]: the start sigma is "
                     "shift(strength) (0.9545 at 0.75, shift 7).", where=strength_panel),
        amf=opt(str, "--amf", help="windowed (FastVMT) | global (DiTFlow: all pairs, all keys)."),
        block=opt(int, "--block", help="0-based transformer block whose self-attention q/k give the AMF."),
        span=opt(int, "--span", help="Windowed AMF: frame pairs with 0 <= j - i < span."),
        tile=opt(str, "--tile", help="Windowed AMF: query tile HxW in tokens (coarse stage)."),
        window=opt(int, "--window", help="Windowed AMF: side of the key window in tokens (fine stage; clamped to "
                   "the H/16 x W/16 token grid, where it is global attention)."),
        temperature=opt(float, "--temperature", help="AMF softmax temperature tau in softmax(tau q.k / sqrt(D))."),
        head_mode=opt(str, "--head-mode", help="qk: average q and k over heads (FastVMT) | logits: average the "
                      "per-head logits (DiTFlow)."),
        guided_steps=opt(int, "--guided-steps", help="Optimise the latent in the first N steps."),
        inner_steps=opt(int, "--inner-steps", help="Optimiser steps per guided step."),
        reuse_interval=opt(int, "--reuse-interval", help="Recompute the gradient every N inner steps and reuse it "
                           "in between (1 = always recompute)."),
        lr=opt(float, "--lr", help="Learning rate at the first inner step."),
        lr_end=opt(float, "--lr-end", help="Learning rate at the last inner step (linear)."),
        lr_decay=opt(str, "--lr-decay", help="inner: lr -> lr-end across each step's inner steps (FastVMT) | "
                     "outer: constant within a step, decaying across the guided steps (DiTFlow)."),
        optimizer=opt(str, "--optimizer", help="adamw (weight decay 0.01) | adam."),
        loss=opt(str, "--loss", help="fastvmt: distance-weighted AMF loss + window loss | ditflow: MSE where the "
                 "reference moves."),
        amf_weight=opt(float, "--amf-weight", help="Weight of the AMF loss (fastvmt loss)."),
        window_weight=opt(float, "--window-weight", help="Weight of the corresponding-window loss (fastvmt loss; "
                          "0 = off)."),
        ref_amf=opt(str, "--ref-amf", help="per-step: reference re-noised to each guided step's sigma (FastVMT) | "
                    "clean: once from the clean latent (DiTFlow)."),
        ref_argmax=opt(bool, "--ref-argmax/--no-ref-argmax", help="Hard argmax for the reference AMF (DiTFlow) "
                       "instead of soft-argmax."),
        truncate=opt(bool, "--truncate/--no-truncate", help="Stop guided forwards after the capture block (later "
                     "blocks cannot change its q/k)."),
    )
