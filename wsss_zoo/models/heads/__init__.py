"""Heads of wsss_zoo (one component per file)."""
