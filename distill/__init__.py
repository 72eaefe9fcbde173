"""Distillation: objectives, reward feedback, the training loop, datasets."""
