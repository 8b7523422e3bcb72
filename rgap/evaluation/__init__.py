"""Scoring a reconstruction against the private images: metrics, matching a batch to its originals, PNG files."""
