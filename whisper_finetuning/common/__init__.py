"""Helpers every layer shares (standard library only)."""
