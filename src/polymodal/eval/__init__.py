"""Evaluation: pure metric functions (metrics.py) and evaluators that embed data."""
