"""The training app end to end on the tiny default: outputs, resume, reward gradients, bad input."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import distill.train as train_mod
from distill.feedback import RewardFeedback
from distill.finish import videos_of
from distill.train import run_training, setup
from turbo.config import ConfigError
from turbo.pipeline import lora_model
from turbo.video import video_info, write_video


def cfg_for(*overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("train", overrides=["experiment=smoke", *overrides])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_run_writes_every_output(tmp_path):
    run_training(cfg_for(), tmp_path)
    lora = tmp_path / "student" / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and (tmp_path / "student" / "guidance_embedding.safetensors").is_file()
    assert lora_model(tmp_path / "student") == cfg_for().model.name  # which model it is a student of
    assert (tmp_path / "config.yaml").read_text().count("_target_") > 3
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"cd", "reward/clip", "score/clip", "student/loss", "student/grad_norm"} <= set(rows[0])
    # the logged total is the sum of the logged terms
    assert rows[0]["student/loss"] == pytest.approx(rows[0]["cd"] + rows[0]["reward/clip"], rel=1e-5)
    videos = sorted((tmp_path / "samples").glob("*.mp4"))
    assert [v.name.split("_")[0] for v in videos] == ["student", "teacher"]
    info = video_info(videos[0])
    assert (info.frames, info.height, info.width) == (9, 32, 32)
    assert (tmp_path / "DONE").is_file() and "speed-up" in (tmp_path / "report.md").read_text()
    # the timing is honest: a warm-up, then the median of repeats; no ratio beyond what the network
    # evaluations allow (teacher 4 steps with CFG = 8 NFE, student 2 steps = 2 NFE: at most 4x)
    timing = json.loads((tmp_path / "DONE").read_text())["sec_per_video"]
    assert timing["speedup_bound"] == 4.0 and 0 < timing["speedup"] <= 1.25 * timing["speedup_bound"]
    assert "network evaluations allow at most 4.0x" in (tmp_path / "report.md").read_text()


def test_end_of_run_toybench_scores_teacher_and_student_side_by_side(tmp_path, capsys):
    run_training(cfg_for("eval=toybench", "eval.num_prompts=2", "eval.reference_per_prompt=2", "eval.every=2"), tmp_path)
    done = json.loads((tmp_path / "DONE").read_text())
    names = list(done["eval"])
    assert [n.split(",")[0] for n in names] == ["teacher", "teacher", "student"]
    assert "4 steps" in names[0] and "2 steps" in names[1] and "2 steps" in names[2]
    for row in done["eval"].values():
        assert 0 <= row["total"] <= 100 and row["sec_per_video"] > 0
    table = (tmp_path / "eval" / "toybench.md").read_text()
    assert table.strip() in (tmp_path / "report.md").read_text()
    assert "Semantic" in table and table.splitlines()[0] in capsys.readouterr().out
    assert [done["eval"][n]["nfe"] for n in names] == [8, 4, 2]  # CFG counts 2 per step; the student 1
    assert "| NFE / video |" in table
    # the validation probe every eval.every=2 steps, and the pictures a person looks at
    probes = [r for r in metrics(tmp_path) if "val/total" in r]
    assert [r["step"] for r in probes] == [2, 4] and all(0 <= r["val/semantic"] <= 100 for r in probes)
    for png in (tmp_path / "curves.png", tmp_path / "eval" / "toybench_grid.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "eval" / "toybench").glob("*.mp4"))) == 6  # 2 prompts x 3 samplers


@pytest.mark.parametrize("objective", [[], ["objective=dmd2", "objective.gan.enabled=true"], ["objective=diffusion", "reward=none"]],
                         ids=["cd", "dmd2_gan", "diffusion_base"])
def test_killed_run_resumes_with_identical_losses(tmp_path, monkeypatch, objective):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_training(cfg_for("train.steps=6", *objective), full)

    real_step = train_mod.train_step

    def dies_at_step_5(run, step, drawn=None):
        if step == 4:  # the 5th step: after the checkpoint of step 4 was written
            raise KeyboardInterrupt("killed")
        return real_step(run, step, drawn)

    monkeypatch.setattr(train_mod, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg_for("train.steps=6", *objective), killed)
    assert not (killed / "DONE").exists() and len(metrics(killed)) == 4
    monkeypatch.setattr(train_mod, "train_step", real_step)

    with pytest.raises(ConfigError, match="resume=true"):  # not silently restarted
        run_training(cfg_for("train.steps=6", *objective), killed)
    run_training(cfg_for("train.steps=6", "resume=true", *objective), killed)
    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    # identical up to float reordering in multi-threaded CPU kernels (seen: 2e-6 relative)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in set(ra) - {"sec"}:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-8), (ra["step"], k)


def test_finished_run_is_never_overwritten_silently(tmp_path):
    run_training(cfg_for("train.steps=2"), tmp_path)
    before = (tmp_path / "student" / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="finished run"):
        run_training(cfg_for("train.steps=2"), tmp_path)
    with pytest.raises(ConfigError, match="finished run"):
        run_training(cfg_for("train.steps=2", "resume=true"), tmp_path)
    assert (tmp_path / "student" / "pytorch_lora_weights.safetensors").read_bytes() == before
    run_training(cfg_for("train.steps=2", "overwrite=true", "seed=1"), tmp_path)  # explicit: allowed
    assert (tmp_path / "student" / "pytorch_lora_weights.safetensors").read_bytes() != before


def test_reward_gradient_reaches_the_lora(tmp_path):
    run = setup(cfg_for(), tmp_path)
    batch = train_mod.load_batch(run, 0)
    losses = run.objective.generator_loss(batch, 0, torch.Generator().manual_seed(0))
    reward = run.feedback(losses.x0, batch.prompts, torch.Generator().manual_seed(0))
    params = run.objective.trainable()["student"]
    grads = torch.autograd.grad(reward.loss, params, allow_unused=True)
    lora_grads = [g for g in grads if g is not None]
    assert lora_grads and sum(float(g.abs().sum()) for g in lora_grads) > 0
    assert all(torch.isfinite(g).all() for g in lora_grads)


def test_feedback_decodes_only_the_frames_it_scores(tmp_path):
    run = setup(cfg_for(), tmp_path)
    feedback: RewardFeedback = run.feedback
    seen = []
    real = run.vae.decode_frames
    run.vae.decode_frames = lambda z, ids: (seen.append(ids.tolist()), real(z, ids))[1]
    latents = torch.randn(2, *run.vae.latent_shape(9, 32, 32), requires_grad=True)
    out = feedback(latents, ["a red circle moving left"] * 2, torch.Generator().manual_seed(0))
    assert len(seen) == 1 and len(seen[0]) == 2  # tiny_clip scores 2 frames
    assert out.loss.item() == pytest.approx(-float(out.scores["clip"].mean()), rel=1e-5)


def test_bad_input_gives_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="tain: unknown key"):
        setup(cfg_for("+tain.steps=3"), tmp_path / "a")
    with pytest.raises(Exception, match="model.path"):
        setup(cfg_for("model=wan2.1_t2v_1.3b", "model.path=/no/such/folder"), tmp_path / "b")
    with pytest.raises(ConfigError, match="reward.clip.model.checkpoint"):
        setup(cfg_for("reward=clip"), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        setup(cfg_for("reward=clip", "reward.clip.model.checkpoint=/tmp/no_such.pt"), tmp_path / "d")
    with pytest.raises(ConfigError, match="objective.huber_cc: unknown key; .*ConsistencyDistillation takes .*huber_c"):
        setup(cfg_for("+objective.huber_cc=0.1"), tmp_path / "e")
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4k"):
        setup(cfg_for("video.num_frames=8"), tmp_path / "f")


def test_non_video_file_names_the_file(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_video(root / "ok.mp4", torch.rand(9, 3, 32, 32))
    (root / "notes.mp4").write_text("not a video")
    (root / "metadata.jsonl").write_text(json.dumps({"video": "ok.mp4", "caption": "a red circle moving left"}) + "\n"
                                         + json.dumps({"video": "notes.mp4", "caption": "a blue square moving up"}) + "\n")
    cfg = cfg_for("data=videos", f"data.root={root}", 
                  "train.batch_size=2")
    with pytest.raises(ValueError, match="only 1 usable items.*notes.mp4"):  # skipped, but a batch needs 2
        run_training(cfg, tmp_path / "run")


@pytest.mark.parametrize("objective", ["dmd2", "w2s"])
def test_distribution_matching_objectives_run_end_to_end(tmp_path, objective):
    run_training(cfg_for(f"objective={objective}", "train.steps=6", "objective.dfake_gen_update_ratio=5"), tmp_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if "dm" in r] == [1, 6]  # the generator every 5th step
    assert all("critic/denoise" in r and "critic/grad_norm" in r for r in rows)  # the critic every step
    assert "reward/clip" in rows[0]  # reward feedback composes with every objective
    assert len(list((tmp_path / "samples").glob("student_*.mp4"))) == 1
    assert (tmp_path / "checkpoints" / "step_000006" / "critic" / "pytorch_lora_weights.safetensors").is_file()


def test_prompt_only_data_trains_dmd2_and_is_refused_where_videos_are_needed(tmp_path):
    run_training(cfg_for("objective=dmd2", "data=prompts", "train.steps=2"), tmp_path / "ok")
    with pytest.raises(ConfigError, match="needs real videos"):
        setup(cfg_for("objective=dmd2", "objective.gan.enabled=true", "data=prompts"), tmp_path / "gan")
    with pytest.raises(ConfigError, match="needs real videos"):
        setup(cfg_for("objective=w2s", "objective.gt_weight=0.1", "data=prompts"), tmp_path / "gt")
    with pytest.raises(ConfigError, match="needs real videos"):
        setup(cfg_for("data=prompts"), tmp_path / "cd")


def test_t2v_turbo_v1_mixture_trains_and_logs_each_term(tmp_path, fake_checkpoints):
    """reward=t2v_turbo_v1 (HPSv2.1 x1 on 5 frames + InternVideo2 x2 on 8 frames) with tiny stand-ins
    for the checkpoints: each term is logged on its own and their sum is the reward loss."""
    from tests.conftest import tiny_reward_overrides

    cfg = cfg_for("reward=t2v_turbo_v1", "train.steps=2")
    fill = [f"{k}={fake_checkpoints[k]}" for k in ("reward.hpsv2.model.checkpoint", "reward.internvideo2.model.checkpoint",
                                                  "reward.internvideo2.model.tokenizer_path")]
    cfg = cfg_for("reward=t2v_turbo_v1", "train.steps=2", *fill, *tiny_reward_overrides(cfg))
    run_training(cfg, tmp_path)
    row = metrics(tmp_path)[0]
    assert {"reward/hpsv2", "reward/internvideo2", "score/hpsv2", "score/internvideo2"} <= set(row)
    assert row["reward/hpsv2"] == pytest.approx(-1.0 * row["score/hpsv2"], rel=1e-5)
    assert row["reward/internvideo2"] == pytest.approx(-2.0 * row["score/internvideo2"], rel=1e-5)
    assert row["student/loss"] == pytest.approx(row["cd"] + row["reward/hpsv2"] + row["reward/internvideo2"], rel=1e-5)


@pytest.mark.parametrize("objective", ["cd", "dmd2", "w2s"])
def test_generate_with_no_sampler_keys_reproduces_the_end_of_run_student(tmp_path, objective):
    """Each objective writes student/sampler.json; turbo-generate lora=<run>/student reads it, so the
    student samples as at the end of its run (same latents for the same prompt and seed)."""
    from turbo.generate import load, sample_latents
    from turbo.sampling import Sampler

    extra = ["objective.denoising_timesteps=[999,499]", "reward=none"] if objective != "cd" else []
    run = run_training(cfg_for(f"objective={objective}", "train.steps=2", *extra), tmp_path)
    saved = Sampler.load(tmp_path / "student")
    assert saved.name == {"cd": "consistency", "dmd2": "fixed", "w2s": "fixed"}[objective]
    assert saved.num_steps == 2 and (saved.guidance == 2.0 if objective == "cd" else True)
    end = list(train_mod.stages(run).values())[-1]
    s, v = run.cfg.samples, run.cfg.video
    prompt = s.prompts[0]
    want = end.latents([prompt], v.num_frames, v.height, v.width, torch.Generator().manual_seed(s.seed))
    with initialize_config_module(config_module="conf", version_base="1.3"):
        gen_cfg = compose("generate", overrides=["model=tiny_wan", f"lora={tmp_path / 'student'}", "device=cpu"])
    pipe = load(gen_cfg)
    assert pipe.sampler == saved == end.sampler
    got = sample_latents(pipe, gen_cfg, prompt, s.seed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and it is the student, not the teacher: the teacher's few-step sample differs
    teacher = saved(pipe.denoiser, pipe.text([prompt]), None, pipe.vae.latent_shape(v.num_frames, v.height, v.width),
                    torch.Generator().manual_seed(s.seed), "teacher")
    assert (got - teacher).abs().max() > 1e-6


def test_optimizers_are_hydra_partials_and_a_missing_one_is_one_line(tmp_path):
    run = setup(cfg_for("objective.optim.student.optimizer._target_=torch.optim.SGD",
                        "+objective.optim.student.optimizer.momentum=0.5", "~objective.optim.student.optimizer.betas",
                        "~objective.optim.student.optimizer.weight_decay"), tmp_path / "sgd")
    opt = run.optimizers["student"].optimizer  # accelerate wraps it
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.5
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # T2V-Turbo's 8-bit AdamW is optional: one clear line
        with pytest.raises(ConfigError, match=r"^objective.optim.student.optimizer._target_=bitsandbytes.optim.AdamW8bit: cannot be imported .*install"):
            setup(cfg_for("objective.optim.student.optimizer._target_=bitsandbytes.optim.AdamW8bit"), tmp_path / "bnb")


def test_dataloader_workers_give_the_same_steps_as_the_loop(tmp_path):
    """train.num_workers prepares batches in DataLoader worker processes; the batches (and so the
    losses) are a function of (seed, step) alone, so they equal the in-process run's."""
    losses = {}
    for workers in (0, 2):
        run_training(cfg_for("train.steps=3", "reward=none", f"train.num_workers={workers}"), tmp_path / str(workers))
        losses[workers] = [r["student/loss"] for r in metrics(tmp_path / str(workers))]
    assert losses[0] == losses[2] and len(set(losses[0])) == 3


def test_an_i2v_stage_is_benchmarked_from_the_first_frames_the_benchmark_gives():
    from omegaconf import OmegaConf

    seen = {}

    class Stage:
        i2v = object()

        def video(self, prompts, frames, height, width, generator, first_frame=None):
            seen["first_frame"] = first_frame
            return torch.zeros(len(prompts), frames, 3, height, width)

    class Bench:
        def first_frames(self, prompts):
            return torch.full((len(prompts), 3, 8, 8), 0.5)

    videos_of(Stage(), OmegaConf.create({"num_frames": 3, "height": 8, "width": 8}), Bench())(["a", "b"], 0)
    assert torch.equal(seen["first_frame"], torch.full((2, 3, 8, 8), 0.5))


def test_a_toy_i2v_run_is_probed_and_benchmarked_from_true_first_frames(tmp_path):
    run_training(cfg_for("model=toy_i2v", "data=toy", "reward=none", "eval=toybench", "eval.num_prompts=2",
                         "eval.every=1", "eval.probe_prompts=2", "video.num_frames=9", "video.height=32",
                         "video.width=32", "train.steps=1", "train.batch_size=1"), tmp_path)
    assert "val/total" in metrics(tmp_path)[0]
    done = json.loads((tmp_path / "DONE").read_text())
    assert {"teacher, 4 steps, CFG 3.0", "student, 2 steps"} <= set(done["eval"])


def test_tracker_tensorboard_logs_every_metrics_row(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(cfg_for("tracker=tensorboard"), tmp_path)
    events = list((tmp_path / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard events file under <run>/trackers"
    logged = [EventAccumulator(str(e.parent)).Reload() for e in events]
    scalars = next(a for a in logged if "student/loss" in a.Tags()["scalars"])
    losses = [(e.step, e.value) for e in scalars.Scalars("student/loss")]
    assert losses == [(r["step"], pytest.approx(r["student/loss"], rel=1e-6)) for r in metrics(tmp_path)]


def test_gradient_checkpointing_trains_the_same_student(tmp_path):
    run_training(cfg_for("train.steps=2"), tmp_path / "plain")
    run = run_training(cfg_for("train.steps=2", "train.gradient_checkpointing=true"), tmp_path / "checkpointed")
    assert run.denoiser.backbone.gradient_checkpointing  # it was on: the equality below means something
    for key in ("student/loss", "student/grad_norm", "score/clip"):
        assert [r[key] for r in metrics(tmp_path / "checkpointed")] == pytest.approx(
            [r[key] for r in metrics(tmp_path / "plain")], rel=1e-5, abs=1e-7)


def test_validation_samples_every_n_steps_reach_the_run_dir_and_the_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(cfg_for("samples.every=2", "tracker=tensorboard"), tmp_path)  # 4 steps
    steps = sorted(p.name for p in (tmp_path / "samples").glob("step_*"))
    assert steps == ["step_000002", "step_000004"] and all(any((tmp_path / "samples" / s).glob("*.mp4")) for s in steps)
    logged = [EventAccumulator(str(e.parent)).Reload() for e in (tmp_path / "trackers").rglob("events.out.tfevents.*")]
    images = [a for a in logged if a.Tags()["images"]]
    assert images and [e.step for e in images[0].Images(images[0].Tags()["images"][0])] == [2, 4]


def test_a_bfloat16_base_trains_float32_adapters_to_nearly_the_same_losses(tmp_path):
    run_training(cfg_for("train.steps=2"), tmp_path / "fp32")
    run = run_training(cfg_for("train.steps=2", "base_dtype=bfloat16"), tmp_path / "bf16")
    base = {n: p.dtype for n, p in run.denoiser.backbone.named_parameters() if "lora_" not in n}
    adapters = run.objective.trainable()["student"]
    assert base["blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16 and {p.dtype for p in adapters} == {torch.float32}
    assert base["blocks.0.norm2.weight"] == torch.float32  # diffusers' _keep_in_fp32_modules stay float32
    want, got = metrics(tmp_path / "fp32")[0]["cd"], metrics(tmp_path / "bf16")[0]["cd"]
    assert got == pytest.approx(want, rel=0.1) and got != want  # bf16 rounding of the same function


def test_a_float8_base_is_stored_in_e4m3_and_trains(tmp_path):
    run_training(cfg_for("train.steps=2"), tmp_path / "fp32")
    run = run_training(cfg_for("train.steps=2", "base_dtype=float8"), tmp_path / "fp8")
    weight = dict(run.denoiser.backbone.named_parameters())["blocks.0.attn1.to_q.base_layer.weight"]
    assert weight.dtype == torch.float8_e4m3fn
    assert {p.dtype for p in run.objective.trainable()["student"]} == {torch.float32}
    want, got = metrics(tmp_path / "fp32")[0]["cd"], metrics(tmp_path / "fp8")[0]["cd"]
    assert got == pytest.approx(want, rel=0.5) and got != want


def test_eval_none_runs_without_a_benchmark_or_probe(tmp_path):
    # eval=none (conf/eval/none.yaml, the command-line way; `eval=null` is not one) over the toy default's toybench
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("train", overrides=["eval=none", "train.steps=2", "train.batch_size=1", "samples.teacher_steps=2",
                                          "samples.prompts=[a red circle moving right]"])
    run_training(cfg, tmp_path)
    assert json.loads((tmp_path / "DONE").read_text())["eval"] == {}
    assert not (tmp_path / "eval").exists()
    assert not any(k.startswith("val/") for row in metrics(tmp_path) for k in row)
