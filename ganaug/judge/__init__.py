"""Judging images and models: classification metrics, feature-space metrics and the synthetic-image filter."""
