"""Datasets and transforms (registered into mmseg DATASETS / TRANSFORMS)."""
