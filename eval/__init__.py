"""Evaluation: ToyBench (the toy world's truthful benchmark), the known-target distillation
experiment, per-objective cost benchmarks; VBench / EvalCrafter harnesses arrive with their issues.
eval may import every other package; nothing imports eval."""
