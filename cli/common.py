"""Options the commands share (one declaration each, one help text), and small helpers every command uses.

This module must stay cheap to import: `vmt --help` may not pull in torch or diffusers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vmt.runs.shared import DEFAULT_MODEL as DEFAULT_MODEL  # one default, the library's

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id (read through the HF cache) or a local "
                                       "diffusers folder.", rich_help_panel="Model")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).",
                                                 rich_help_panel="Model")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto: cuda when available).",
                                        rich_help_panel="Runtime")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16 "
                                       "(auto: bfloat16 on cuda, float32 on cpu).", rich_help_panel="Runtime")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="none | model | sequential | group: CPU offload to "
                                         "fit smaller GPUs (model: ~largest component on GPU; group: one "
                                         "transformer block at a time, copies overlapped by CUDA streams; "
                                         "sequential: smallest, slowest).", rich_help_panel="Memory")]
GradCheckpointingOpt = Annotated[bool, typer.Option(
    "--grad-checkpointing/--no-grad-checkpointing", help="Guided forward+backward passes (transfer) keep only "
    "each block's input and recompute blocks in the backward: same gradients, far less activation memory, "
    "one more forward of the run blocks per backward.", rich_help_panel="Memory")]
StorageDtypeOpt = Annotated[str, typer.Option("--storage-dtype", help="none | float8_e4m3fn | float8_e5m2: store "
                                              "transformer weights in float8 and compute in --dtype (half the "
                                              "weight memory of bf16; small numerical change).",
                                              rich_help_panel="Memory")]
AttentionBackendOpt = Annotated[str | None, typer.Option(
    "--attention-backend", help="diffusers attention backend (native, _native_cudnn, flash, _flash_3, sage, "
    "xformers, flex, ...; default: diffusers' own). Guided passes need a backward: a backend without one "
    "(sage) is replaced there by native, said once and recorded in out.json.", rich_help_panel="Memory")]
LoraOpt = Annotated[list[str] | None, typer.Option(
    "--lora", help="PATH[:SCALE][@high|low|both]: a LoRA (.safetensors or folder, diffusers' Wan layout; "
    "repeatable), e.g. a 4-8-step distillation LoRA with --recipe step-distilled; on two-expert Wan2.2, "
    "@high / @low loads it into one expert only. Needs peft.", rich_help_panel="Model")]
CompileOpt = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile each transformer block "
                                          "(regional compilation: one compile, reused by every block; the "
                                          "first step is slow).", rich_help_panel="Memory")]
VaeTilingOpt = Annotated[bool, typer.Option("--vae-tiling/--no-vae-tiling", help="Decode the VAE in tiles "
                                            "(bounded memory at large sizes).", rich_help_panel="Runtime")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; fixes the result on the same device and "
                                      "dtype.", rich_help_panel="Runtime")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="A shipped recipe by name (see `vmt recipes`) or "
                                                "a TOML file of parameter values; flags given on the command "
                                                "line override it.", rich_help_panel="Runtime")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file; a JSON sidecar with the same "
                                         "stem records how it was made.", rich_help_panel="Output")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.",
                                            rich_help_panel="Output")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors only.",
                                        rich_help_panel="Output")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.",
                                        rich_help_panel="Output")]

def quiet_libraries(debug: bool) -> None:
    """Silence diffusers/transformers progress bars and info logs unless --debug."""
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        dl.set_verbosity_error()
        dl.disable_progress_bar()
        tl.set_verbosity_error()
        tl.disable_progress_bar()
    except Exception:  # a missing optional library must not break the command
        pass


def command_line() -> list[str]:
    return ["vmt", *sys.argv[1:]]


# The display and the command path, importable from here as well.
from cli.display import console, reflow, status, step_progress  # noqa: E402
from cli.scaffold import resolve_params, run_guarded  # noqa: E402

__all__ = ["console", "reflow", "resolve_params", "run_guarded", "status", "step_progress"]
