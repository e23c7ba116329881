"""Scoring models: accuracy, NLL, calibration, agreement, size and speed."""
