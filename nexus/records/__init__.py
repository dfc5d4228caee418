"""Prediction records, ground-truth labels and live accuracy (see recorder.py and database.py)."""
