"""Shared model utilities: attention capture, CAM maths, pos-embed resizing."""
