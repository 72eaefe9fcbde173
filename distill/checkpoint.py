"""The run directory: what a run writes, and how a killed run resumes.

    config.yaml              the resolved config
    metrics.jsonl            one JSON line per step
    checkpoints/step_NNNNNN/ student LoRA (diffusers format) + training_state.pt (optimizers,
                             step, RNG states); written atomically, the newest K kept
    student/                 the final student LoRA (pytorch_lora_weights.safetensors)
    samples/*.mp4            teacher and student videos on the same prompts and seed
    report.md, DONE          written last; DONE marks a finished run, never overwritten silently
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig

from turbo.atomic import atomic_dir, atomic_write_text
from turbo.config import ConfigError
from turbo.denoiser import Denoiser
from turbo.lora import load_lora, save_lora

# files Hydra itself puts in the run directory before our code runs
_HYDRA_FILES = {".hydra", "train.log", "distill.train.log"}


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"

    # --- claiming the folder --------------------------------------------------------------------
    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber another run: a finished run needs overwrite=true, an unfinished one
        resume=true (continue) or overwrite=true (start again)."""
        done = (self.path / "DONE").exists()
        ours = [p for p in self.path.iterdir() if p.name not in _HYDRA_FILES] if self.path.exists() else []
        if resume:
            if done and not overwrite:
                raise ConfigError(f"resume=true but {self.path} holds a finished run (DONE exists); "
                                  f"nothing to resume. Raise train.steps in a new hydra.run.dir, or pass overwrite=true")
            if not self.latest():
                raise ConfigError(f"resume=true but {self.path} holds no checkpoint to resume from "
                                  f"(set hydra.run.dir to the run's directory)")
            (self.path / "DONE").unlink(missing_ok=True)
            return
        if ours and not overwrite:
            what = "a finished run (DONE exists)" if done else "an unfinished run"
            raise ConfigError(f"{self.path} already holds {what}; pass resume=true to continue it, "
                              f"overwrite=true to replace it, or choose another hydra.run.dir")
        for p in ours:  # overwrite=true: start clean
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    # --- checkpoints ------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        steps = sorted(self.checkpoints.glob("step_*")) if self.checkpoints.exists() else []
        return steps[-1] if steps else None

    def save_checkpoint(self, step: int, denoiser: Denoiser, objective, optimizers: dict, keep: int) -> Path:
        folder = self.checkpoints / f"step_{step:06d}"
        with atomic_dir(folder) as tmp:
            for name in denoiser.adapters:
                save_lora(denoiser, name, tmp / name)
            torch.save({"step": step,
                        "objective": objective.extra_state(),
                        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / "training_state.pt")
        for old in sorted(self.checkpoints.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def load_latest(self, denoiser: Denoiser, objective, optimizers: dict) -> int:
        folder = self.latest()
        state = torch.load(folder / "training_state.pt", weights_only=False)
        for name in denoiser.adapters:
            load_lora(denoiser, name, folder / name)
        objective.load_extra_state(state["objective"])
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])

    # --- metrics, config, report ---------------------------------------------------------------------
    def append_metrics(self, metrics: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    def read_metrics(self, upto: int) -> list[dict]:
        """Metrics of steps 1..upto; lines past the checkpoint (steps a killed run did after its last
        checkpoint, which will be redone) are dropped from the file."""
        if not self.metrics.exists():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["step"] <= upto]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def write_config(self, text: str) -> None:
        atomic_write_text(self.path / "config.yaml", text)

    def write_report(self, cfg: DictConfig, history: list[dict], timings: dict, evaluation: str = "") -> None:
        last = history[-1] if history else {}
        s = cfg.samples
        lines = [
            f"# turbo-train report: {self.path.name}", "",
            f"- model: {cfg.model.name} ({cfg.model.family}), objective: {cfg.objective._target_.rsplit('.', 1)[-1]}, "
            f"reward: {', '.join(k for k in cfg.reward if not k.startswith('_')) or 'none'}",
            f"- steps: {last.get('step', 0)}, mean step time: "
            f"{sum(h['sec'] for h in history) / max(1, len(history)):.3f} s", "",
            "| metric | first | last |", "|---|---|---|",
        ]
        for k in sorted(last):
            if k not in ("step", "sec") and history:
                lines.append(f"| {k} | {history[0].get(k, float('nan')):.5g} | {last[k]:.5g} |")
        t, st = timings.get("teacher", float("nan")), timings.get("student", float("nan"))
        lines += ["", "| sampler | steps | network evaluations | sec / video (sampling) |", "|---|---|---|---|",
                  f"| teacher (CFG {s.teacher_guidance}) | {s.teacher_steps} | {2 * s.teacher_steps} | {t:.4f} |",
                  f"| student | {s.student_steps} | {s.student_steps} | {st:.4f} |", "",
                  f"Student speed-up: {t / st:.1f}x per video, before the VAE decode "
                  f"({timings.get('decode', float('nan')):.4f} s / video, the same for both).",
                  "Samples: samples/*.mp4. Student LoRA: student/.", ""]
        if evaluation:
            lines += ["## Evaluation", "", evaluation, ""]
        atomic_write_text(self.path / "report.md", "\n".join(lines))

    def mark_done(self, summary: dict) -> None:
        atomic_write_text(self.path / "DONE", json.dumps(summary, indent=2) + "\n")
