"""Hooks (registered into mmseg's HOOKS)."""
from .finite_loss_hook import FiniteLossHook  # noqa: F401

__all__ = ['FiniteLossHook']
