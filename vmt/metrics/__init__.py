"""Metrics of the papers vmt implements: Frechet distances (FVD/FID/IS), energy distance, forecasting
diversity/fidelity, motion fidelity and direction, temporal consistency, seam scores and physics residuals.

Import the submodules directly (`from vmt.metrics.frechet import frechet_distance`); this package imports
nothing so that `vmt --help` stays light.
"""
