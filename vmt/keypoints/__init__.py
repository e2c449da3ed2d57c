"""Keypoint forecasting: GRU-NF (GRU + conditional RealNVP) and GRU-SNF (MCMC refinement at inference).

Modules: `data` (files, layouts, windows, min-max), `flow` (conditional RealNVP with batch norm),
`mcmc` (annealed energies, Metropolis-Hastings), `model` (GRU-NF, sampling, save/load), `train`,
`predict` (detector-unit forecasts), `tracker` (weight-free video keypoints), `render` (drawing, preview).
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
