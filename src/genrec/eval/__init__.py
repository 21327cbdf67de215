"""Offline evaluation: metrics and baselines."""
