"""Flow-matching video model backends: the protocol the samplers use, and its diffusers Wan implementation."""

from vmt.backends.base import Conditioning, FlowBackend

__all__ = ["Conditioning", "FlowBackend"]
