"""Metrics for generated videos."""
