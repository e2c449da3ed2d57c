"""Metrics: distribution distances, diversity and fidelity scores for generated motion."""
