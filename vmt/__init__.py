"""vmt: inference-time video motion methods for flow-matching video generators.

Importing `vmt` is cheap (no torch, no diffusers); the heavy modules import them on use.
"""

__version__ = "0.1.0.dev0"
