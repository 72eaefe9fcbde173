"""Distillation objectives, one per file."""
