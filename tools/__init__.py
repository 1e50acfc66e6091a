"""Thin absl binaries: they parse flags and call the bnas_tf library."""
import bnas_tf  # noqa: F401
