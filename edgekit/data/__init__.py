"""Datasets, preprocessing, decoding and metrics."""
