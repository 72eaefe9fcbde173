"""The run directory: what a run writes, and how a killed run resumes.

    config.yaml              the resolved config
    metrics.jsonl            one JSON line per step
    checkpoints/step_NNNNNN/ student LoRA (diffusers format) + training_state.pt (optimizers,
                             step, RNG states); written atomically, the newest K kept
    student/                 the final student LoRA (pytorch_lora_weights.safetensors) and
                             sampler.json: how it samples (turbo.sampling.Sampler)
    samples/*.mp4            teacher and student videos on the same prompts and seed
    report.md, DONE          written last; DONE marks a finished run, never overwritten silently
    data_skipped.log         the unusable videos the loop skipped (index, file, reason)
    .turbo.lock              the PID of the turbo-train that owns the folder while it runs

Everything written is strict JSON (a non-finite number becomes null) and nothing read back
executes code: training_state.pt is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import pickle
import os
import shutil
import socket
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from turbo.atomic import atomic_dir, atomic_write_text
from turbo.config import ConfigError
from turbo.denoiser import Denoiser
from turbo.lora import load_lora, save_lora
from turbo.timing import cfg_nfe

LOCK = ".turbo.lock"
# files Hydra itself puts in the run directory before our code runs, and our lock
_HYDRA_FILES = {".hydra", "train.log", "distill.train.log", LOCK}


def finite_json(value):
    """``value`` with every non-finite float replaced by None, so json.dumps(allow_nan=False) holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def flatten(node, prefix: str = "") -> dict:
    """A nested dict/list as {"a.b": leaf}."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if node else {prefix: {}}
    return {prefix: node}



class TrainingStopped(RuntimeError):
    """The run cannot go on (diverged, or too much of its data is unusable); the message says why."""


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"

    # --- claiming the folder --------------------------------------------------------------------
    def lock(self) -> None:
        """Own the folder for this process: a live holder is refused by PID, a dead one's lock
        (a killed run) is taken over with a warning. Released by ``unlock``."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock, me = self.path / LOCK, {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                    pid, host = int(holder["pid"]), str(holder["host"])
                except (OSError, ValueError, KeyError, TypeError):
                    pid, host = -1, me["host"]  # torn by a kill between create and write
                if host != me["host"]:
                    raise ConfigError(f"{self.path} is in use by turbo-train PID {pid} on host {host} "
                                      f"(lock {lock}); delete the lock if that run is dead") from None
                if pid > 0 and pid != me["pid"] and _alive(pid):
                    raise ConfigError(f"{self.path} is in use by turbo-train PID {pid} (lock {lock}); "
                                      f"wait for it to end or choose another hydra.run.dir") from None
                if pid != me["pid"]:
                    warnings.warn(f"{lock}: taking over the stale lock of PID {pid}, which is no longer running",
                                  stacklevel=2)
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            return
        raise ConfigError(f"{lock}: could not take the lock (another process is racing for {self.path})")

    def unlock(self) -> None:
        lock = self.path / LOCK
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass

    def resolve_resume(self, resume: bool | str, overwrite: bool) -> tuple[bool, bool]:
        """``resume=auto`` (a requeued job: SLURM preemption or timeout) continues from the newest
        checkpoint when there is one and otherwise starts over (a run killed before its first
        checkpoint has nothing to keep); a finished run is still refused. -> (resume, overwrite)."""
        if resume != "auto":
            return bool(resume), overwrite
        if (self.path / "DONE").exists() and not overwrite:
            raise ConfigError(f"resume=auto but {self.path} holds a finished run (DONE exists); nothing to resume")
        return self.latest() is not None, overwrite or self.latest() is None

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
            for tmp in [*self.checkpoints.glob(".step_*.tmp"), *self.checkpoints.glob(".step_*.old")]:
                shutil.rmtree(tmp, ignore_errors=True)  # left by a write that a kill interrupted
            return
        if ours and not overwrite:
            if done:
                raise ConfigError(f"{self.path} already holds a finished run (DONE exists); pass overwrite=true "
                                  f"to replace it, or choose another hydra.run.dir")
            raise ConfigError(f"{self.path} already holds an unfinished run; pass resume=true to continue it, "
                              f"overwrite=true to replace it, or choose another hydra.run.dir")
        for p in ours:  # overwrite=true: start clean
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    # --- checkpoints ------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        steps = sorted(self.checkpoints.glob("step_*")) if self.checkpoints.exists() else []
        return steps[-1] if steps else None

    def save_checkpoint(self, step: int, denoiser: Denoiser, objective, optimizer_states: dict, keep: int,
                        loop_state: dict | None = None) -> Path | None:
        """Write checkpoint ``step``; a model holding a non-finite weight is not written (None).
        ``optimizer_states``: group -> the optimizer's whole ``state_dict``
        (distill.fsdp.full_optimizer_state, which gathers a sharded run's on every process)."""
        bad = nonfinite_parameters(denoiser, objective)
        if bad:
            warnings.warn(f"step {step}: not writing a checkpoint, {len(bad)} trained tensors hold non-finite "
                          f"values (first: {bad[0]}); the last good checkpoint stays", stacklevel=2)
            return None
        folder = self.checkpoints / f"step_{step:06d}"
        with atomic_dir(folder) as tmp:
            for name in denoiser.adapters:
                save_lora(denoiser, name, tmp / name)
            torch.save({"step": step,
                        "objective": objective.extra_state(),
                        "optimizers": optimizer_states,
                        "loop": loop_state or {},
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / "training_state.pt")
        for old in sorted(self.checkpoints.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def load_latest(self, denoiser: Denoiser, objective) -> tuple[int, dict, dict]:
        """Restore the newest checkpoint's adapters, objective state and RNG; returns (its step, the
        loop's own state, group -> optimizer ``state_dict``: loaded by the caller once its
        optimizers exist, which for a sharded run is after the sharding)."""
        folder = self.latest()
        path = folder / "training_state.pt"
        try:  # tensors, numbers, strings and containers only: a crafted pickle is refused, never run
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConfigError(f"{path}: refused, it holds more than tensors and plain values "
                              f"({str(e).splitlines()[0][:200]}); was it written by turbo-train?") from None
        for name in denoiser.adapters:
            load_lora(denoiser, name, folder / name)
        objective.load_extra_state(state["objective"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"]), dict(state.get("loop", {})), state["optimizers"]

    # --- metrics, config, report ---------------------------------------------------------------------
    def append_metrics(self, metrics: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(dumps(metrics) + "\n")

    def read_metrics(self, upto: int) -> list[dict]:
        """Metrics of steps 1..upto; lines past the checkpoint (steps a killed run did after its last
        checkpoint, which will be redone) are dropped from the file, and so is a torn last line
        (a kill in the middle of a write), with a warning."""
        if not self.metrics.exists():
            return []
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{self.metrics}:{number}: not a JSON line; the file is damaged") from None
                warnings.warn(f"{self.metrics}: dropped its torn last line {number} (a killed write)", stacklevel=2)
        rows = [r for r in rows if r["step"] <= upto]
        atomic_write_text(self.metrics, "".join(dumps(r) + "\n" for r in rows))
        return rows

    def check_resume_config(self, new: dict, free: tuple[str, ...], allow: list[str], defaults: dict | None = None) -> None:
        """resume=true: refuse a config whose training keys differ from the stored config.yaml
        (a new learning rate would otherwise be written there and silently ignored), unless each
        changed key is in ``free`` or ``allow`` (a key or a section prefix). A key the stored config
        lacks (a newer turbo added it) is unchanged at its value in ``defaults`` (flat keys): the
        behaviour the run had."""
        from omegaconf import OmegaConf

        path = self.path / "config.yaml"
        if not path.is_file():
            return
        old = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
        new = flatten(new)

        def exempt(key: str) -> bool:
            return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in (*free, *allow))

        defaults = defaults or {}
        changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k, "<absent>") != new.get(k, "<absent>")
                   and not exempt(k) and not (k not in old and k in defaults and new.get(k) == defaults[k])]
        if changed:
            shown = ", ".join(f"{k} ({old.get(k, '<absent>')} -> {new.get(k, '<absent>')})" for k in changed[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            raise ConfigError(f"resume=true: the config changes what {path.parent.name} trains: {shown}{more}; "
                              f"keep the run's values, or pass resume_allow=[{','.join(changed[:3])}] to accept the change")

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
        teacher_nfe, student_nfe = cfg_nfe(s.teacher_steps, s.teacher_guidance), s.student_steps
        bound = timings.get("speedup_bound", float("nan"))
        lines += ["", "| sampler | steps | network evaluations | sec / video (sampling) |", "|---|---|---|---|",
                  f"| teacher (CFG {s.teacher_guidance}) | {s.teacher_steps} | {teacher_nfe} | {t:.4f} |",
                  f"| student | {s.student_steps} | {student_nfe} | {st:.4f} |", "",
                  f"Student speed-up: {t / st:.1f}x per video (network evaluations allow at most {bound:.1f}x), "
                  f"before the VAE decode ({timings.get('decode', float('nan')):.4f} s / video, the same for both); "
                  f"median of 3 timed calls after a warm-up.",
                  "Samples: samples/*.mp4. Student LoRA: student/. Training curves (losses, reward scores, "
                  "validation probe): curves.png; the benchmark's videos side by side: eval/toybench_grid.png.", ""]
        if evaluation:
            lines += ["## Evaluation", "", evaluation, ""]
        atomic_write_text(self.path / "report.md", "\n".join(lines))

    def mark_done(self, summary: dict) -> None:
        atomic_write_text(self.path / "DONE", dumps(summary, indent=2) + "\n")

    def log_skipped(self, lines: list[str]) -> None:
        with (self.path / "data_skipped.log").open("a") as f:
            f.write("".join(line + "\n" for line in lines))


def nonfinite_parameters(denoiser: Denoiser, objective) -> list[str]:
    """Names of trained tensors (adapters, guidance embeddings, objective extras) holding NaN / inf."""
    named = [(n, p) for n, p in denoiser.named_parameters() if p.requires_grad]
    named += [(f"objective.{k}", v) for k, v in objective.extra_state().items() if torch.is_tensor(v)]
    return [n for n, p in named if p.is_floating_point() and not torch.isfinite(p).all()]


def app_defaults() -> dict:
    """turbo-train's own values of its plain keys (conf/train.yaml, flat), for runs made before a key
    existed (``RunDir.check_resume_config``'s ``defaults``)."""
    import conf
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(conf.__file__).parent / "train.yaml")
    return {k: v for k, v in flatten(OmegaConf.to_container(node, resolve=False)).items()
            if not isinstance(v, str) or "${" not in v}
