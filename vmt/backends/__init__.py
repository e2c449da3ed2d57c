"""Flow-matching video model backends: the protocols the samplers use, and their diffusers Wan implementation."""

from vmt.backends.base import (
    AttentionAccess,
    ComputeCounts,
    Conditioning,
    Denoiser,
    FlowBackend,
    GenerationBackend,
    LatentCodec,
)

__all__ = ["AttentionAccess", "ComputeCounts", "Conditioning", "Denoiser", "FlowBackend", "GenerationBackend",
           "LatentCodec"]
