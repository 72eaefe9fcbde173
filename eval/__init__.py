"""Evaluation: VBench / EvalCrafter harnesses, built-in metrics, speed benchmarks, sweep reports.

Empty so far: the training run's own report (distill/checkpoint.py) times teacher against
student; the harnesses arrive with their issues.
"""
