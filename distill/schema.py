"""What turbo-train's config may hold: every key, its type and its range (``turbo.config.check_config``).

Plain sections are listed here; nodes with a ``_target_`` (objective, reward, data, eval and the
model's parts) are checked against their targets' signatures. A key not listed is refused with one
line naming it and the keys that exist there.
"""

from __future__ import annotations

from turbo.config import (ANY, BOOL, DEVICE, MODEL, STRINGS, VIDEO, Rule, Section, Target, number,
                          positive_int)

NON_NEGATIVE_INT = Rule((int,), lambda v: v >= 0, "an integer >= 0")

TRAIN = {
    "model": MODEL,
    "objective": Target(),
    "reward": Target(),
    "data": Target(),
    "eval": Target(nullable=True),
    "video": VIDEO,
    "seed": NON_NEGATIVE_INT,
    "device": DEVICE,
    "precision": Rule((str,), lambda v: v in ("no", "fp16", "bf16"), "no, fp16 or bf16"),
    "base_dtype": Rule((str,), lambda v: v in ("float32", "bfloat16", "float8"), "float32, bfloat16 or float8"),
    "resume": Rule((bool, str), lambda v: isinstance(v, bool) or v == "auto", "true, false or auto"),
    "overwrite": BOOL,
    "tracker": Rule((str,), lambda v: v in ("none", "tensorboard", "wandb"), "none, tensorboard or wandb"),
    "resume_allow": STRINGS,
    "student": Section({
        "rank": positive_int("a LoRA rank >= 1"),
        "alpha": number(lambda v: v > 0, "a number > 0"),
        "dropout": number(lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "target_modules": STRINGS,
        "guidance_embedding": BOOL,
        "export": Section({"original_keys": BOOL, "merged": BOOL}),
    }),
    "train": Section({
        "steps": positive_int(),
        "batch_size": positive_int(),
        "checkpoint_every": positive_int(),
        "keep_checkpoints": positive_int(),
        "max_nonfinite_steps": positive_int(),
        "num_workers": NON_NEGATIVE_INT,
        "gradient_checkpointing": BOOL,
        "fsdp": BOOL,
    }),
    "samples": Section({
        "prompts": Rule((list,), lambda v: len(v) > 0 and all(isinstance(p, str) and p.strip() for p in v),
                        "a non-empty list of non-empty strings"),
        "every": NON_NEGATIVE_INT,
        "seed": NON_NEGATIVE_INT,
        "fps": number(lambda v: v > 0, "a number > 0"),
        "teacher_steps": positive_int(),
        "teacher_guidance": number(),
        "student_steps": positive_int(),
        "student_guidance": number(nullable=True),
    }),
}

# Keys whose change on resume=true leaves the trained function the same (how long, how often,
# what is written at the end); any other changed key is refused unless named in resume_allow.
RESUME_FREE = ("resume", "overwrite", "resume_allow", "device", "tracker", "student.export", "train.steps", "train.checkpoint_every",
               "train.keep_checkpoints", "train.max_nonfinite_steps", "train.num_workers", "train.gradient_checkpointing", "train.fsdp", "samples", "eval", "data.verify",
               "data.max_skip_fraction")

__all__ = ["ANY", "RESUME_FREE", "TRAIN"]

# turbo-cache (distill/cache.py)
CACHE = {
    "model": MODEL,
    "data": Target(),
    "video": VIDEO,
    "device": DEVICE,
    "cache": Section({"dir": Rule((str,), expect="a folder path or null", nullable=True), "shard_size": positive_int(),
                      "overwrite": BOOL}),
}
