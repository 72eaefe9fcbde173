"""turbo-eval: sample a suite (VBench, VBench-I2V, EvalCrafter, ToyBench) from a teacher or a student,
score it (VBench in an environment of its own; built-in metrics here), aggregate exactly as the
benchmarks do, and report.

    suites.py       the suites: which prompts, how many videos each, what each file is called
    sample.py       the sample stage: resumable, shardable, a manifest of every seed and prompt
    vbench_env.py   the vbench environment (its own venv) and the worker it runs (vbench_worker.py)
    aggregate.py    VBench / VBench-I2V / EvalCrafter totals with the benchmarks' own constants
    metrics.py      built-in metrics (CLIPScore, temporal flickering, rewards, FVD, ToyBench)
    app.py          the Hydra app (conf/eval.yaml)
"""
