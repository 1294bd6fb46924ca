"""Tool helpers (launchers, checkpoint loading)."""
