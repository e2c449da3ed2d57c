"""The sampling modes shared by refine and transfer, as plain names (importing this pulls in no torch)."""

GRIDS = ("model", "euler")  # the model folder's scheduler grid, or diffusers' FlowMatchEuler grid
NOISE_MODES = ("pipeline", "portable")  # one generator on the execution device, or a CPU start
ARITHMETIC_MODES = ("float32", "release")  # v cast to float32 before the update, or sigma * v in the model dtype
