"""Checkpoint converters from the original repositories key layouts."""
