"""turbo-generate on the tiny models: outputs, determinism, student LoRA loading, samplers, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from turbo.config import ConfigError, build
from turbo.denoiser import Denoiser
from turbo.generate import generate, load, sample_latents
from turbo.i2v import load_image
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from safetensors import safe_open

from turbo.lora import WEIGHTS, save_lora
from turbo.pipeline import IMAGE_SEED_OFFSET, first_frames, t2i2v
from turbo.sampling import Sampler, sample_consistency, sample_fixed_steps, sample_teacher
from turbo.video import read_video, video_info

FAST = ["sampler.teacher.steps=2"]
# what a run would write beside a student's LoRA (student/sampler.json): each kind, 2 steps
SAMPLERS = {"consistency": Sampler("consistency", steps=2, guidance=3.0), "fixed": Sampler("fixed", timesteps=(999, 499))}
# the tiny Wan2.1-I2V teacher with its image conditioning (turbo/i2v.py): 4 mask channels, pixel-space
# padding, CLIP image tokens; Wan's transformer splits text from image tokens assuming 512 text tokens
I2V = ["model=tiny_wan_i2v", "++model.text_encoder.max_length=512",
       "++model.i2v={mask_channels:4,order:mask_first,pad:pixels,"
       "image_encoder:{_target_:turbo.i2v.tiny_clip_vision,seed:0}}"]


def cfg_for(*overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("generate", overrides=[*FAST, *overrides])


def perturbed_student(model: str, folder: Path, guidance_embedding: bool = True, *overrides,
                      sampler: Sampler = SAMPLERS["consistency"]) -> Denoiser:
    """A tiny denoiser of ``model`` with a random (non-zero) "student" LoRA, saved to ``folder`` with
    ``sampler`` as its sampler.json."""
    m = cfg_for(f"model={model}", *overrides).model
    d = Denoiser(build(m.backbone, "b"), build(m.schedule, "s"), m.family, m.get("time_embedding_module"))
    d.add_adapter("student", rank=4, alpha=8, target_modules=list(m.lora_targets), guidance_embedding=guidance_embedding)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in d.adapter_parameters("student"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    save_lora(d, "student", folder)
    sampler.save(folder)
    return d


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "student"
    return perturbed_student("tiny_wan", folder), folder


def test_prompts_times_seeds_videos_grid_and_index(tmp_path):
    paths = generate(cfg_for("seeds=[0,7]", "fps=6"), tmp_path)
    assert [p.name for p in paths] == ["000_0_a_red_circle_moving_right.mp4", "001_7_a_red_circle_moving_right.mp4",
                                       "002_0_a_blue_square_moving_up.mp4", "003_7_a_blue_square_moving_up.mp4"]
    for p in paths:
        info = video_info(p)
        assert (info.frames, info.height, info.width, info.fps) == (9, 32, 32, 6)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (2 + 2 * 34, 2 + 2 * 34)  # 2 prompts (rows) x 2 seeds, padding 2
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in rows] == [
        (p.name, pr, s) for p, (pr, s) in zip(paths, [(a, s) for a in ("a red circle moving right",
                                                                        "a blue square moving up") for s in (0, 7)])]
    assert all(r["sampler"]["name"] == "teacher" and r["steps"] == 2 and r["lora"] is None and r["seconds"] > 0
               for r in rows)


def test_prompt_file_one_per_line(tmp_path):
    (tmp_path / "p.txt").write_text("a green triangle\n\n  a yellow circle moving left  \n")
    paths = generate(cfg_for(f"prompt_file={tmp_path / 'p.txt'}"), tmp_path / "out")
    assert [p.name for p in paths] == ["000_0_a_green_triangle.mp4", "001_0_a_yellow_circle_moving_left.mp4"]


def test_same_seed_same_video(tmp_path):
    # crf=0 (lossless): lossy x264 does not encode the same frames to the same file every time (docs/evaluation.md)
    cfg = cfg_for("prompts=[a red circle moving right]", "seeds=[3]", "crf=0")
    a, b = generate(cfg, tmp_path / "a")[0], generate(cfg, tmp_path / "b")[0]
    assert torch.equal(read_video(a)[0], read_video(b)[0])
    pipe = load(cfg)
    x = sample_latents(pipe, cfg, "a red circle moving right", 3)
    assert torch.equal(x, sample_latents(pipe, cfg, "a red circle moving right", 3))
    assert not torch.equal(x, sample_latents(pipe, cfg, "a red circle moving right", 4))


@pytest.mark.parametrize("sampler", ["consistency", "fixed"])
def test_student_lora_loads_and_samples_as_the_in_memory_student(student, sampler):
    d, folder = student
    SAMPLERS[sampler].save(folder)  # no sampler keys: the student samples as its sampler.json says
    cfg = cfg_for(f"lora={folder}")
    pipe = load(cfg)
    assert pipe.sampler == SAMPLERS[sampler]
    assert pipe.role == "student" and "student" in pipe.denoiser.guidance_embeddings
    prompt, seed = "a blue square moving up", 5
    got = sample_latents(pipe, cfg, prompt, seed)
    cond = pipe.text([prompt])
    shape = pipe.vae.latent_shape(9, 32, 32)
    gen = torch.Generator().manual_seed(seed)
    if sampler == "consistency":
        want = sample_consistency(d, cond, shape, 2, gen, grid_steps=50, guidance=3.0, role="student")
        teacher = sample_consistency(d, cond, shape, 2, torch.Generator().manual_seed(seed), grid_steps=50,
                                     role="teacher")
    else:
        want = sample_fixed_steps(d, cond, shape, [999, 499], gen, role="student")
        teacher = sample_fixed_steps(d, cond, shape, [999, 499], torch.Generator().manual_seed(seed), role="teacher")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - teacher).abs().max() > 1e-2  # the LoRA changes the output
    # and the app's decoded frames are the in-memory student's
    torch.testing.assert_close(pipe.vae.decode(got), pipe.vae.decode(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["teacher", "consistency", "fixed"])
def test_every_sampler_runs_with_a_student(student, sampler, tmp_path):
    _, folder = student
    if sampler != "teacher":
        SAMPLERS[sampler].save(folder)
    name = "teacher" if sampler == "teacher" else "auto"
    paths = generate(cfg_for(f"lora={folder}", f"sampler.name={name}", "prompts=[a red circle]"), tmp_path)
    assert video_info(paths[0]).frames == 9
    row = json.loads((tmp_path / "prompts.jsonl").read_text())
    assert row["sampler"]["name"] == sampler and row["steps"] == 2
    assert row["lora"] == str(folder)


def test_student_without_guidance_embedding(tmp_path):
    folder = tmp_path / "student"
    perturbed_student("tiny_wan", folder, guidance_embedding=False)
    pipe = load(cfg_for(f"lora={folder}"))
    assert "student" in pipe.denoiser.adapters and not pipe.denoiser.guidance_embeddings


@pytest.mark.parametrize("overrides,error,match", [
    (["mode=i2v"], ConfigError, "mode=i2v needs an image-to-video model .* found model=tiny_wan without model.i2v"),
    (["mode=t2i2v"], ConfigError, "mode=t2i2v needs an image-to-video model"),
    ([*I2V], ConfigError, "model=tiny_wan_i2v is an image-to-video model .* use mode=i2v with image="),
    ([*I2V, "mode=i2v"], ConfigError, "mode=i2v needs image=<an image file .*found image=null"),
    ([*I2V, "mode=i2v", "image=/nonexistent.png"], FileNotFoundError, "image=/nonexistent.png: no such file"),
    (["image=/some.png"], ConfigError, "image=/some.png is read by mode=i2v only, found mode=t2v"),
    ([*I2V, "mode=t2i2v", "image_stage.sampler.name=euler_a"], ConfigError, "image_stage.sampler.name='euler_a'"),
    ([*I2V, "mode=t2i2v", "image_stage.lora=/nonexistent"], FileNotFoundError, "image_stage.lora=/nonexistent"),
    ([*I2V, "mode=t2i2v", "model@image_stage.model=wan2.1_t2v_1.3b"], ConfigError,
     "image_stage.model.path must be set"),
    ([*I2V, "mode=i2v", "image=/x.png", "long.windows=2"], ConfigError, "long.windows=2 .* is for mode=t2v only"),
    (["sampler.teacher.grid=karras"], ConfigError, "sampler.teacher.grid must be one of \\['index', 'diffusers'\\]"),
    (["long.windows=2", "sampler.teacher.grid=diffusers"], ConfigError, "set sampler.teacher.grid=index"),
    (["mode=v2v"], ConfigError, "mode='v2v'"),
    (["sampler.name=euler_a"], ConfigError, "sampler.name='euler_a'"),
    (["sampler.steps=2"], ConfigError, "sampler.steps=2 overrides a student's own sampler"),
    (["video.num_frames=8"], ValueError, "video.num_frames must be 1 \\+ 4k"),
    (["video.height=30"], ValueError, "video.height and video.width must be multiples of 8"),
    (["lora=/nonexistent/student"], FileNotFoundError, "lora=/nonexistent/student: no such folder"),
    (["prompt_file=/nonexistent/p.txt"], FileNotFoundError, "prompt_file=/nonexistent/p.txt"),
    (["seeds=[]"], ConfigError, "seeds must list"),
    (["+video.fps=24"], ConfigError, "video.fps: unknown key; video has height, num_frames, width"),
    (["video.num_frames=0"], ConfigError, "video.num_frames=0: expected an integer >= 1"),
    (["+sampler.teacher.eta=0"], ConfigError, "sampler.teacher.eta: unknown key"),
    (["+model.backbone.foo=1"], ConfigError, "model.backbone.foo: unknown key; turbo.models.tiny_wan takes"),
    (["device=banana"], ConfigError, "device='banana'"),
    (["crf=52"], ConfigError, "crf=52: expected an integer in 0..51"),
])
def test_bad_input_is_one_clear_error(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        generate(cfg_for(*overrides), tmp_path)
    assert not list(tmp_path.glob("*.mp4"))


def test_lora_folder_without_weights(tmp_path):
    (tmp_path / "student").mkdir()
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        generate(cfg_for(f"lora={tmp_path / 'student'}"), tmp_path / "out")


@pytest.mark.parametrize("model,overrides,match", [
    ("tiny_modelscope", [], "is a LoRA of another model"),                    # UNet3D keys in a Wan
    ("tiny_wan", ["+model.backbone.ffn_dim=96"], "does not fit this WanTransformer3DModel"),  # same family, other shapes
], ids=["unet3d_into_wan", "wan_of_other_size"])
def test_lora_of_another_architecture_names_the_file(tmp_path, model, overrides, match):
    folder = tmp_path / "other_student"
    perturbed_student(model, folder, True, *overrides)
    with pytest.raises(ValueError, match=rf"other_student/pytorch_lora_weights\.safetensors: {match}") as e:
        load(cfg_for(f"lora={folder}"))
    assert e.value.__cause__ is None and "\n" not in str(e.value)


def test_a_student_of_another_model_config_warns_or_is_refused(tmp_path):
    """save_lora keeps model.name in the LoRA's metadata; a loader given another model config warns
    (turbo-generate) or, strict, refuses with one line naming the folder and both models."""
    from omegaconf import OmegaConf

    from turbo.pipeline import check_lora_model, lora_model

    folder = tmp_path / "student"
    m = cfg_for("model=tiny_wan").model
    d = Denoiser(build(m.backbone, "b"), build(m.schedule, "s"), m.family, m.get("time_embedding_module"))
    d.add_adapter("student", rank=4, alpha=8, target_modules=list(m.lora_targets))
    save_lora(d, "student", folder, model="tiny_wan_finetune")
    SAMPLERS["fixed"].save(folder)
    assert lora_model(folder) == "tiny_wan_finetune"
    with pytest.warns(UserWarning, match="trained on the model named 'tiny_wan_finetune'"):
        load(cfg_for(f"lora={folder}"))
    with pytest.raises(ValueError, match=rf"--i2v-student={folder}: this student was trained on the model "
                                         rf"named 'tiny_wan_finetune' .* but model=x is 'tiny_wan'") as e:
        check_lora_model(m, str(folder), key="model=x", lora_key="--i2v-student", strict=True)
    assert "\n" not in str(e.value)
    check_lora_model(OmegaConf.create({"name": "tiny_wan_finetune"}), str(folder), strict=True)  # its own model
    save_lora(d, "student", folder)  # written without a model name (older runs): nothing to check
    assert lora_model(folder) is None
    check_lora_model(m, str(folder), strict=True)


def _cli(args, cwd):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "turbo.generate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_runs_and_errors_are_one_line(tmp_path, student):
    _, folder = student
    r = _cli([f"hydra.run.dir={tmp_path}/run", f"lora={folder}", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "run").glob("*.mp4"))) == 2 and (tmp_path / "run" / "grid.png").is_file()
    unet = tmp_path / "unet_student"
    perturbed_student("tiny_modelscope", unet)
    for args, needle in [(["mode=i2v"], "mode=i2v needs an image-to-video model"),
                         ([f"lora={unet}"], f"{unet}/pytorch_lora_weights.safetensors")]:
        r = _cli([f"hydra.run.dir={tmp_path}/bad", *args], tmp_path)
        assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_long_videos_stream_windows_into_one_mp4(tmp_path, student):
    _, folder = student
    SAMPLERS["fixed"].save(folder)
    cfg = cfg_for(f"lora={folder}", "long.windows=3", "long.overlap=1", "prompts=[a red circle moving right]")
    (path,) = generate(cfg, tmp_path)
    # 9 frames for the first window, then 8 new ones per window (the overlap's one frame is skipped)
    assert video_info(path).frames == 9 + 2 * 8
    assert Image.open(tmp_path / "grid.png").size[0] > 0


def test_merged_lora_samples_like_the_kept_lora(tmp_path, student):
    _, folder = student
    SAMPLERS["consistency"].save(folder)
    kept = sample_latents(load(cfg_for(f"lora={folder}")), cfg_for(), "a red circle moving right", 3)
    cfg = cfg_for(f"lora={folder}", "inference.merge_lora=true")
    merged = sample_latents(load(cfg), cfg, "a red circle moving right", 3)
    torch.testing.assert_close(merged, kept, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="inference.merge_lora"):
        load(cfg_for("inference.merge_lora=true"))


def test_int8_generation_runs(tmp_path, student):
    pytest.importorskip("optimum.quanto")
    _, folder = student
    cfg = cfg_for(f"lora={folder}", "inference.merge_lora=true", "inference.quantize=int8",
                  "prompts=[a blue square moving up]")
    (path,) = generate(cfg, tmp_path)
    assert video_info(path).frames == 9


# --- image-to-video and the factored pipeline ------------------------------------------------------
@pytest.fixture(scope="module")
def first_frame_png(tmp_path_factory):
    """A 40x48 image (not the video size: it is resized to cover 32x32 and centre-cropped)."""
    path = tmp_path_factory.mktemp("img") / "first.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(path)
    return path


def test_i2v_writes_videos_of_the_image(tmp_path, first_frame_png):
    cfg = cfg_for(*I2V, "mode=i2v", f"image={first_frame_png}", "seeds=[0,1]", "fps=5",
                  "prompts=[a red circle moving right]")
    paths = generate(cfg, tmp_path)
    assert len(paths) == 2
    for p in paths:
        info = video_info(p)
        assert (info.frames, info.height, info.width, info.fps) == (9, 32, 32, 5)
        assert read_video(p)[0].shape == (9, 3, 32, 32)
    assert Image.open(tmp_path / "grid.png").size == (2 + 2 * 34, 2 + 34)
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert all(r["mode"] == "i2v" and r["image"] == str(first_frame_png) and r["steps"] == 2 for r in rows)
    # the video is the I2V teacher's from this image: another image gives another video
    pipe = load(cfg)
    assert pipe.i2v is not None and pipe.i2v.image_encoder is not None
    frame = load_image(first_frame_png, 32, 32)
    x = sample_latents(pipe, cfg, "a red circle moving right", 0, frame)
    assert torch.equal(x, sample_latents(pipe, cfg, "a red circle moving right", 0, frame))
    assert (x - sample_latents(pipe, cfg, "a red circle moving right", 0, frame.flip(-1))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="model is an image-to-video model .* needs a first frame"):
        sample_latents(pipe, cfg, "a red circle moving right", 0)


def test_t2i2v_is_the_image_stage_then_the_i2v_stage(tmp_path):
    cfg = cfg_for(*I2V, "mode=t2i2v", "image_stage.sampler.teacher.steps=2", "seeds=[3]", "fps=4")
    paths = generate(cfg, tmp_path)
    assert len(paths) == 2
    for p in paths:
        info = video_info(p)
        assert (info.frames, info.height, info.width, info.fps) == (9, 32, 32, 4)
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert rows[0]["mode"] == "t2i2v" and rows[0]["image_stage"] == {
        "model": "tiny_sd15", "sampler": {"name": "teacher", "steps": 2, "guidance_scale": 7.5, "grid": "index"},
        "steps": 2, "lora": None}
    video_stage, image_stage = load(cfg), load(cfg, "image_stage")
    assert image_stage.denoiser.family == "unet2d" and video_stage.i2v is not None
    prompt, seed = "a blue square moving up", 3
    composed = t2i2v(image_stage, video_stage, [prompt], seed, 9, 32, 32)
    assert composed.shape == (1, 9, 3, 32, 32) and 0 <= composed.min() and composed.max() <= 1
    # the first frame: the T2I teacher's one-frame sample (CFG, 2 steps) from its own seed stream
    cond, uncond = image_stage.text([prompt]), image_stage.text([""])
    t2i = sample_teacher(image_stage.denoiser, cond, uncond, image_stage.vae.latent_shape(1, 32, 32), 2, 7.5,
                         torch.Generator().manual_seed(seed + IMAGE_SEED_OFFSET))
    frame = image_stage.vae.decode(t2i)[:, 0]
    torch.testing.assert_close(frame, first_frames(image_stage, [prompt], 32, 32, seed))
    # the video: mode=i2v's path from that frame, with the video's seed
    again = video_stage.video([prompt], 9, 32, 32, torch.Generator().manual_seed(seed), "", first_frame=frame)
    torch.testing.assert_close(composed, again)


def test_t2i2v_image_stage_can_be_a_student_or_a_one_frame_video_model(tmp_path):
    folder = tmp_path / "t2i_student"
    perturbed_student("tiny_sd15", folder, False, sampler=SAMPLERS["fixed"])
    base = [*I2V, "mode=t2i2v", "image_stage.sampler.teacher.steps=2"]
    teacher = load(cfg_for(*base), "image_stage")
    student = load(cfg_for(*base, f"image_stage.lora={folder}"), "image_stage")
    assert student.role == "student" and student.sampler.timesteps == (999, 499)
    a = first_frames(teacher, ["a red circle"], 32, 32, 0)
    b = first_frames(student, ["a red circle"], 32, 32, 0)
    assert a.shape == b.shape == (1, 3, 32, 32) and (a - b).abs().max() > 1e-3
    wan = load(cfg_for(*base, "model@image_stage.model=tiny_wan"), "image_stage")  # T2V model, one frame
    assert first_frames(wan, ["a red circle"], 32, 32, 0).shape == (1, 3, 32, 32)


def test_diffusers_grid_option_reaches_the_teacher_sampler():
    cfg = cfg_for("sampler.teacher.grid=diffusers", "sampler.teacher.steps=3")
    pipe = load(cfg)
    got = sample_latents(pipe, cfg, "a red circle", 0)
    cond, uncond = pipe.text(["a red circle"]), pipe.text([""])
    shape = pipe.vae.latent_shape(9, 32, 32)
    want = sample_teacher(pipe.denoiser, cond, uncond, shape, 3, 7.5, torch.Generator().manual_seed(0), grid="diffusers")
    index = sample_teacher(pipe.denoiser, cond, uncond, shape, 3, 7.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want)
    assert (got - index).abs().max() > 1e-3  # the grids differ


def test_traversal_prompt_writes_inside_the_output_dir(tmp_path):
    out = tmp_path / "a" / "b"
    paths = generate(cfg_for("prompts=['x/../../../escaped']"), out)
    assert [p.name for p in paths] == ["000_0_x_escaped.mp4"]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents] == []


def test_lora_metadata_that_contradicts_its_tensors_is_refused_before_allocation(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "student"
    perturbed_student("tiny_wan", folder)
    path = folder / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta[LORA_ADAPTER_METADATA_KEY])
    config["transformer.r"] = 8  # the tensors have rank 4
    meta[LORA_ADAPTER_METADATA_KEY] = json.dumps(config)
    save_file(load_file(path), path, metadata=meta)
    with pytest.raises(ValueError, match=r"pytorch_lora_weights\.safetensors: its metadata says rank 8, but .* rank 4"):
        load(cfg_for(f"lora={folder}"))


def test_a_student_missing_its_guidance_embedding_is_refused_by_name(tmp_path):
    folder = tmp_path / "student"
    perturbed_student("tiny_wan", folder, guidance_embedding=True)
    (folder / "guidance_embedding.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"guidance_embedding\.safetensors is missing"):
        load(cfg_for(f"lora={folder}"))


def test_a_lora_of_another_rank_is_one_line(tmp_path):
    from turbo.lora import load_lora

    folder = tmp_path / "student"
    perturbed_student("tiny_wan", folder)
    m = cfg_for().model
    other = Denoiser(build(m.backbone, "b"), build(m.schedule, "s"), m.family, m.get("time_embedding_module"))
    other.add_adapter("student", rank=8, alpha=8, target_modules=list(m.lora_targets), guidance_embedding=True)
    with pytest.raises(ValueError, match=r"a LoRA of rank 4, but adapter 'student' here has rank 8 \(student.rank\)"):
        load_lora(other, "student", folder)


def test_a_lora_file_that_is_not_safetensors_is_one_error_naming_it(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(b"not a safetensors file")
    SAMPLERS["fixed"].save(folder)
    with pytest.raises(ValueError, match=r"student/pytorch_lora_weights\.safetensors: cannot be read as a safetensors file") as e:
        load(cfg_for(f"lora={folder}"))
    assert "\n" not in str(e.value)
