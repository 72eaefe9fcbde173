"""Hydra configs of turbo, shipped inside the package so an installed turbo finds them (pkg://conf)."""
