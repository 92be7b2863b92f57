"""Inference, post-processing and evaluation of trained runs."""
