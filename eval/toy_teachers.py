"""The shipped toy teachers on ToyBench: text-to-video against the factored text -> image -> video
pipeline (Magic 1-For-1), and the I2V teacher given the true first frame (its upper bound).

    python -m eval.toy_teachers [--steps 50] [--guidance 3.0] [--t2i-guidance G] [--seed 0] [--prompts 24] [--out FILE]
        [--t2i toy_t2i_w128_15k] [--i2v toy_i2v_w128] [--t2v-student RUN/student] [--i2v-student RUN/student]

Rows (all on ToyBench's held-out prompts, same seeds; ``<t2i>`` / ``<i2v>`` are the ``--t2i`` /
``--i2v`` config names without ``toy_``):
- ``t2v``: the T2V teacher (conf/model/toy_t2v.yaml) with CFG;
- ``<t2i> -> <i2v>``: the T2I teacher draws the first frame, the I2V teacher animates it (turbo/pipeline.py);
- ``real first frame -> <i2v>``: the I2V teacher from a real clip's first frame of the prompt;
- ``<t2i>, one frame`` (one-frame videos, scored by a one-frame ToyBench: colour, shape and count
  only mean anything there).

With ``--t2v-student`` / ``--i2v-student`` (the ``student`` folder of a turbo-train run on
``model=toy_t2v`` / the ``--i2v`` model, sampled as its ``sampler.json`` says) the students get the
same rows: the T2V student, and the I2V student after the T2I teacher's first frame (the factored
student of Magic 1-For-1) and from the true first frame (an I2V student of the width-64
``toy_i2v`` is scored with ``--t2i toy_t2i --i2v toy_i2v``; a student whose LoRA says it was trained
on another model config is refused). ``--t2i`` / ``--i2v`` pick the teachers' model
configs; by default the strongest shipped ones, the width-128 T2I and I2V teachers (the T2V row is
the width-64 teacher the embedded default distils).
"""

from __future__ import annotations

import argparse

import torch

from eval.toybench import ToyBench, compare_table
from turbo.config import compose_config
from turbo.pipeline import Sampler, load_stage, t2i2v


def toy_stage(name: str, sampler: Sampler, lora: str | None = None, lora_key: str = "lora"):
    """The shipped toy model config ``name`` as a CPU stage sampling with ``sampler``, optionally with
    a run's student LoRA (``lora``; ``lora_key`` names it in errors)."""
    model = compose_config("train", [f"model={name}"]).model
    # a student of another model would fill its row with that model's numbers: refused, not warned
    return load_stage(model, sampler, torch.device("cpu"), key=f"model={name}", lora=lora, strict_model=True,
                      lora_key=lora_key)


def video(stage, num_frames: int = 9, first_frames: dict | None = None):
    """A ToyBench sampler ``(prompts, seed) -> B,F,3,32,32`` over ``stage``; an I2V stage starts from
    ``first_frames[prompt]``."""
    def sample(prompts: list[str], seed: int) -> torch.Tensor:
        first = None if first_frames is None else torch.stack([first_frames[p] for p in prompts])
        return stage.video(prompts, num_frames, 32, 32, torch.Generator().manual_seed(seed), first_frame=first)
    return sample


def factored(t2i, i2v):
    """A ToyBench sampler: the T2I stage draws the first frame, the I2V stage the video (Magic 1-For-1)."""
    return lambda prompts, seed: t2i2v(t2i, i2v, prompts, seed, 9, 32, 32)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m eval.toy_teachers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--t2i-guidance", type=float,
                        help="the T2I teacher's CFG scale, in the factored and the one-frame rows (default: --guidance)")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' noise seed (a seed's spread: run 0, 1, 2)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--t2i", default="toy_t2i_w128_15k", help="the T2I teacher's model config (toy_t2i_w128_15k, toy_t2i)")
    parser.add_argument("--i2v", default="toy_i2v_w128", help="the I2V teacher's model config (toy_i2v_w128, toy_i2v)")
    parser.add_argument("--t2v-student", help="a toy_t2v run's student folder: also score it")
    parser.add_argument("--i2v-student", help="the student folder of a run on the --i2v model: also score it, factored and from the true first frame")
    args = parser.parse_args(argv)
    sampler = Sampler("teacher", steps=args.steps, guidance_scale=args.guidance)
    t2i_guidance = args.guidance if args.t2i_guidance is None else args.t2i_guidance
    t2v, i2v = (toy_stage(n, sampler) for n in ("toy_t2v", args.i2v))
    t2i = toy_stage(args.t2i, Sampler("teacher", steps=args.steps, guidance_scale=t2i_guidance))
    bench = ToyBench(num_prompts=args.prompts, num_frames=9)
    real_first = {p: v[0][0] for p, v in bench.real_videos(seed=7).items()}  # a real clip per prompt, not scored

    t2i_name, i2v_name = args.t2i.removeprefix("toy_"), args.i2v.removeprefix("toy_")
    if t2i_guidance != args.guidance:
        t2i_name += f" (CFG {t2i_guidance})"
    samplers, nfe = {}, {}  # label -> ToyBench sampler, and its network evaluations per video

    def row(label: str, sample, evaluations: int) -> None:
        samplers[label], nfe[label] = sample, evaluations

    row(f"t2v ({args.steps} steps, CFG {args.guidance})", video(t2v), t2v.sampler.nfe)
    row(f"{t2i_name} -> {i2v_name} ({args.steps} + {args.steps} steps)", factored(t2i, i2v),
        t2i.sampler.nfe + i2v.sampler.nfe)
    row(f"real first frame -> {i2v_name} ({args.steps} steps)", video(i2v, first_frames=real_first), i2v.sampler.nfe)
    if args.t2v_student:
        student = toy_stage("toy_t2v", Sampler.load(args.t2v_student, "--t2v-student"), args.t2v_student, "--t2v-student")
        row(f"t2v student ({student.sampler.nfe} NFE)", video(student), student.sampler.nfe)
    if args.i2v_student:
        i2v_student = toy_stage(args.i2v, Sampler.load(args.i2v_student, "--i2v-student"), args.i2v_student, "--i2v-student")
        n = i2v_student.sampler.nfe
        row(f"{t2i_name} ({args.steps} steps) -> {i2v_name} student ({n} NFE)", factored(t2i, i2v_student),
            t2i.sampler.nfe + n)
        row(f"real first frame -> {i2v_name} student ({n} NFE)", video(i2v_student, first_frames=real_first), n)
    rows, _ = bench.compare(samplers, nfe=nfe, seed=args.seed)
    image_bench = ToyBench(num_prompts=args.prompts, num_frames=1)
    one_frame = f"{t2i_name}, one frame ({args.steps} steps)"
    image_rows, _ = image_bench.compare({one_frame: video(t2i, num_frames=1)}, nfe={one_frame: t2i.sampler.nfe},
                                        seed=args.seed)
    return emit(compare_table({**rows, **image_rows}, num_prompts=args.prompts, videos_per_prompt=1), args.out)


def emit(text: str, out: str | None) -> str:
    """Print a command's markdown result and, with ``--out``, also write it there (atomically)."""
    print(text)
    if out:
        from turbo.atomic import atomic_write_text

        atomic_write_text(out, text + "\n")
    return text


if __name__ == "__main__":
    main()
