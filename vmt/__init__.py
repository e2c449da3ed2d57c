"""vmt: inference-time video motion methods for flow-matching video generators.

Importing `vmt` is cheap (no torch, no diffusers); the heavy modules import them on use.
"""

__version__ = "0.1.0.dev0"


def __getattr__(name: str):
    """The run requests, imported on first use (`from vmt import RefineRequest`) so `import vmt` stays cheap."""
    if name.endswith("Request") or name == "Batch":
        import vmt.runs

        if name in vmt.runs.__all__:
            return getattr(vmt.runs, name)
    raise AttributeError(f"module 'vmt' has no attribute {name!r}")
