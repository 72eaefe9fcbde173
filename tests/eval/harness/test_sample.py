"""turbo-eval's suites and its sample stage: VBench naming, seeds, resume after a kill, shards."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from eval.harness.app import build_suite, run
from eval.harness.sample import read_manifest, sample_suite
from eval.harness.suites import (SuiteError, evalcrafter_items, i2v_ratio, item_seed, toybench_items,
                                 vbench_i2v_items, vbench_items)
from turbo.config import ConfigError
from turbo.video import read_video

TOY = ["a red circle moving right", "a blue square moving up", "a green triangle standing still",
       "a yellow circle moving left", "a purple square moving down"]


def full_info(tmp_path: Path, prompts=TOY, dims=("subject_consistency", "temporal_flickering")) -> Path:
    """A suite file in VBench_full_info.json's format (a list of {prompt_en, dimension[, auxiliary_info]})."""
    entries = [{"prompt_en": p, "dimension": [dims[i % len(dims)]]} for i, p in enumerate(prompts)]
    entries.append({"prompt_en": prompts[0], "dimension": ["color"], "auxiliary_info": {"color": {"color": "red"}}})
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(entries))
    return path


def test_vbench_items_names_seeds_and_counts(tmp_path):
    path = full_info(tmp_path)
    items = vbench_items(path, flicker_per_prompt=25)
    names = [i.file for i in items]
    assert names[:5] == [f"{TOY[0]}-{i}.mp4" for i in range(5)]        # VBench's {prompt}-{index}.mp4
    assert len(items) == 3 * 5 + 2 * 25                                   # flickering prompts: 25 each
    assert len(set(names)) == len(names)
    first = [i for i in items if i.prompt == TOY[0]][0]
    assert set(first.dimensions) == {"subject_consistency", "color"}      # listed twice: sampled once, both dims
    # a file's seed is a function of (seed, prompt, index) only: subsets and limits do not move it
    sub = vbench_items(path, ["temporal_flickering"], flicker_per_prompt=25)
    assert {i.file: i.seed for i in sub}.items() <= {i.file: i.seed for i in items}.items()
    assert first.seed == item_seed(0, TOY[0], 0) != item_seed(1, TOY[0], 0)
    assert len({i.seed for i in items}) == len(items)
    assert [i.prompt for i in vbench_items(path, limit=2)][::5] == TOY[:2]


def test_vbench_augmented_prompts_keep_the_original_name(tmp_path):
    path = full_info(tmp_path)
    aug = tmp_path / "aug.json"
    aug.write_text(json.dumps({TOY[1]: "a blue square moving up, in a long and detailed description"}))
    item = [i for i in vbench_items(path, augmented_prompts=str(aug)) if i.prompt == TOY[1]][0]
    assert item.file == f"{TOY[1]}-0.mp4" and item.model_prompt.startswith("a blue square moving up, in")
    txt = tmp_path / "aug.txt"
    txt.write_text("only one line\n")
    with pytest.raises(SuiteError, match="aug.txt: has 1 lines, but the suite has 6 entries"):
        vbench_items(path, augmented_prompts=str(txt))


@pytest.mark.parametrize("content, match", [
    ('{"a": 1}', "expected VBench_full_info.json .a non-empty JSON list"),
    ('[{"prompt": "x"}]', r"entry 0 is not a VBench_full_info.json entry: expected the fields \['prompt_en', 'dimension'\]"),
    ("not json", "is not JSON"),
])
def test_a_suite_file_not_in_vbench_format_is_one_line_naming_it(tmp_path, content, match):
    path = tmp_path / "suite.json"
    path.write_text(content)
    with pytest.raises(SuiteError, match=match) as e:
        vbench_items(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_dimension_and_bad_prompt_are_refused(tmp_path):
    with pytest.raises(SuiteError, match=r"suite.dimensions: \['colour'\] are not dimensions of"):
        vbench_items(full_info(tmp_path), ["colour"])
    with pytest.raises(SuiteError, match="cannot be a file name"):
        vbench_items(full_info(tmp_path, prompts=["a/b"]))


def test_evalcrafter_and_i2v_suites(tmp_path):
    (tmp_path / "prompt700.txt").write_text("\n".join(f"prompt {i}" for i in range(700)))
    items = evalcrafter_items(tmp_path)
    assert [i.file for i in items[:2]] == ["0000.mp4", "0001.mp4"] and items[-1].file == "0699.mp4"
    (tmp_path / "prompt700.txt").write_text("one\ntwo")
    with pytest.raises(SuiteError, match="prompt700.txt: has 2 prompts; EvalCrafter has 700"):
        evalcrafter_items(tmp_path)
    data = tmp_path / "i2v"
    (data / "crop" / "16-9").mkdir(parents=True)
    (data / "crop" / "16-9" / "cat.jpg").write_bytes(b"")
    (data / "vbench2_i2v_full_info.json").write_text(json.dumps([
        {"prompt_en": "a cat", "dimension": ["i2v_subject"], "image_type": "animal", "image_name": "cat.jpg"},
        {"prompt_en": "a dog", "dimension": ["i2v_subject"], "image_type": "animal", "image_name": "dog.jpg"}]))
    assert i2v_ratio(1280, 720) == "16-9" and i2v_ratio(832, 480) == "7-4" and i2v_ratio(32, 32) == "1-1"
    items = vbench_i2v_items(data, ratio="16-9", limit=1)
    assert [i.file for i in items] == [f"a cat-{i}.mp4" for i in range(5)]
    assert items[0].image == str(data / "crop" / "16-9" / "cat.jpg")
    with pytest.raises(SuiteError, match="dog.jpg: no such image"):
        vbench_i2v_items(data, ratio="16-9")


def cfg_for(overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("eval", overrides=["device=cpu", "sampler.teacher.steps=2", *overrides])


def frames(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_video(p)[0].numpy() for p in sorted(folder.glob("*.mp4"))}


def test_sharded_vbench_sampling_resumes_after_a_kill_and_equals_the_unsharded_run(tmp_path):
    prompts = [s.caption() for s in __import__("turbo.toy.split", fromlist=["x"]).split_specs(0, 0.2)[1][:20]]
    path = full_info(tmp_path, prompts, dims=("subject_consistency",))
    # crf=0 (lossless): lossy libx264 output of the same frames varies between encodes (measured: up to 5 different
    # files from 6 encodes of one 32x32 clip, even single-threaded), so only lossless files can be compared exactly
    over = ["suite=vbench", f"suite.full_info={path}", "suite.videos_per_prompt=1", "suite.dimensions=[subject_consistency]",
            "allow_partial=true", "crf=0"]
    whole = tmp_path / "whole"
    run(cfg_for([*over, "stage=sample"]), whole)
    suite = build_suite(cfg_for(over))
    assert sorted(frames(whole / "videos")) == sorted(f"{p}-0.mp4" for p in prompts)   # what VBench looks for

    sharded = tmp_path / "sharded"
    from eval.harness import app

    class Killed(Exception):
        pass

    def kill_after_3(n):
        if n == 3:
            raise Killed

    generate, extra = app.make_generate(cfg_for(over), suite)
    from turbo.video import write_video
    with pytest.raises(Killed):
        sample_suite(generate, suite.items, sharded, write=lambda p, v: write_video(p, v, fps=8, crf=0), shard=0, num_shards=2,
                     extra=extra, after_each=kill_after_3)
    assert len(list((sharded / "videos").glob("*.mp4"))) == 3
    (sharded / "tmp" / "shard-0-of-2" / "9.mp4").write_bytes(b"partial")   # what a kill mid-write leaves behind
    resumed = sample_suite(generate, suite.items, sharded, write=lambda p, v: write_video(p, v, fps=8, crf=0), shard=0,
                           num_shards=2, extra=extra)
    assert (resumed.written, resumed.skipped) == (7, 3)
    assert not (sharded / "tmp").exists()
    run(cfg_for([*over, "stage=sample", "shard=1", "num_shards=2"]), sharded)
    a, b = frames(whole / "videos"), frames(sharded / "videos")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    manifest = read_manifest(sharded)
    assert sorted(manifest) == sorted(a)
    row = manifest[f"{prompts[3]}-0.mp4"]
    assert row["seed"] == item_seed(0, prompts[3], 0) and row["prompt"] == prompts[3]
    assert row["model"] == "toy_t2v" and row["sampler"]["steps"] == 2


def test_toybench_through_the_harness_scores_and_aggregates(tmp_path):
    result = run(cfg_for(["suite.num_prompts=3", "metrics=[temporal_flickering]"]), tmp_path)
    assert result["suite"] == "toybench" and result["num_videos"] == 3
    assert 0 <= result["aggregate"]["Total"] <= 100 and set(result["dimensions"]) >= {"colour", "shape", "motion"}
    assert 0 < result["builtin"]["temporal_flickering"] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["aggregate"] == result["aggregate"]
    assert "| **Total** |" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "scores" / "builtin.jsonl").read_text().splitlines()) == 3
    assert [i.file for i in toybench_items(3)] == [f.name for f in sorted((tmp_path / "videos").glob("*.mp4"),
                                                                          key=lambda p: [i.file for i in toybench_items(3)].index(p.name))]


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="suite.dimensions lists 1 of vbench's 16 dimensions"):
        run(cfg_for(["suite=vbench", f"suite.full_info={full_info(tmp_path)}", "suite.dimensions=[subject_consistency]"]),
            tmp_path / "out")
    with pytest.raises(ConfigError, match=r"crf=60: expected an integer in 0..51"):
        run(cfg_for(["crf=60"]), tmp_path / "out")
    with pytest.raises(ConfigError, match="stage='scored': choose one of"):
        run(cfg_for(["stage=scored"]), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="3 of the suite's 3 files are missing"):
        run(cfg_for(["suite.num_prompts=3", "stage=score"]), tmp_path / "empty")
    scores = tmp_path / "partial" / "scores" / "vbench.json"      # a results file with one dimension of 16
    scores.parent.mkdir(parents=True)
    scores.write_text(json.dumps({"dimensions": {"subject_consistency": 0.9}}))
    from eval.harness.aggregate import MissingDimension
    with pytest.raises(MissingDimension, match=f"missing background_consistency, .*overall_consistency "
                                               f"\\(read from {scores}\\); .*allow_partial=true"):
        run(cfg_for(["suite=vbench", f"suite.full_info={full_info(tmp_path)}", "stage=aggregate"]), tmp_path / "partial")


def test_the_factored_pipeline_samples_a_text_suite_with_an_i2v_model(tmp_path):
    """image_stage.model set: each video is t2i2v(first frame from the T2I model, then the I2V model),
    equal to calling turbo.pipeline.t2i2v directly; without it, toybench's I2V path uses true first frames."""
    from eval.harness import app
    from turbo.pipeline import load_stage, sampler_from_config, t2i2v

    over = ["model=toy_i2v", "suite.num_prompts=2", "stage=sample", "crf=0"]   # lossless: comparable exactly
    factored = [*over, "+model@image_stage.model=toy_t2i", "image_stage.sampler.teacher.steps=2"]
    run(cfg_for(factored), tmp_path / "factored")
    run(cfg_for(over), tmp_path / "true_frames")
    cfg = cfg_for(factored)
    video = load_stage(cfg.model, sampler_from_config(cfg.sampler, None), torch.device("cpu"))
    image = load_stage(cfg.image_stage.model, sampler_from_config(cfg.image_stage.sampler, None), torch.device("cpu"))
    item = build_suite(cfg).items[1]
    want = t2i2v(image, video, [item.prompt], item.seed, 9, 32, 32)[0]
    from turbo.video import write_video
    write_video(tmp_path / "want.mp4", want, fps=8, crf=0)          # the same mp4 round trip as the harness's
    got = frames(tmp_path / "factored" / "videos")[item.file]
    np.testing.assert_array_equal(got, read_video(tmp_path / "want.mp4")[0].numpy())
    assert np.abs(got - frames(tmp_path / "true_frames" / "videos")[item.file]).max() > 0.1
    row = read_manifest(tmp_path / "factored")[item.file]
    assert row["image_stage"]["model"] == "toy_t2i" and row["image_stage"]["sampler"]["steps"] == 2
    with pytest.raises(ConfigError, match="model must then be an image-to-video model"):
        app.make_generate(cfg_for(["+model@image_stage.model=toy_t2i"]), build_suite(cfg_for([])))
    with pytest.raises(ConfigError, match="image_stage.model=toy_i2v is an image-to-video model: the image stage"):
        app.make_generate(cfg_for(["model=toy_i2v", "+model@image_stage.model=toy_i2v"]), build_suite(cfg_for([])))
    with pytest.raises(FileNotFoundError, match="image_stage.lora=.*: no such folder"):  # turbo-generate's t2i2v checks
        app.make_generate(cfg_for(["model=toy_i2v", "+model@image_stage.model=toy_t2i",
                                   f"image_stage.lora={tmp_path / 'missing'}"]), build_suite(cfg_for([])))
    with pytest.raises(ConfigError, match="set \\+model@image_stage.model"):
        (tmp_path / "ec_prompts").mkdir()
        (tmp_path / "ec_prompts" / "prompt700.txt").write_text("a red circle moving right\n" * 700)
        run(cfg_for(["model=toy_i2v", "suite=evalcrafter", f"suite.prompts={tmp_path / 'ec_prompts'}", "suite.limit=1"]), tmp_path / "ec")


def test_vbench_long_is_chosen_for_videos_of_5_seconds_or_more():
    from eval.harness.scoring import is_long

    assert not is_long(cfg_for(["suite=vbench", "video.num_frames=33", "fps=8"]))       # 4.1 s
    assert is_long(cfg_for(["suite=vbench", "video.num_frames=81", "fps=16"]))          # 5.06 s (Wan2.1)
    assert not is_long(cfg_for(["suite=vbench", "video.num_frames=81", "fps=16", "suite.long=false"]))
    with pytest.raises(ConfigError, match="suite.long must be true, false or auto, found 'yes'"):
        is_long(cfg_for(["suite=vbench", "suite.long=yes"]))


def test_builtin_rewards_and_fvd_through_turbo_eval(tmp_path):
    """metrics=[rewards, fvd]: one column per reward term, equal to RewardScores on the written files;
    FVD against a reference folder equals FVD.score_set on the same videos (a random-init I3D)."""
    from eval.harness.i3d import InceptionI3d
    from eval.harness.metrics import FVD, RewardScores
    from turbo.config import build

    torch.manual_seed(0)
    i3d = tmp_path / "i3d.pt"
    torch.save(InceptionI3d().state_dict(), i3d)
    run(cfg_for(["suite.num_prompts=3", "stage=sample"]), tmp_path / "ref")        # the "real" set
    over = ["suite.num_prompts=3", "metrics=[rewards,fvd]", "reward@rewards=toy", f"fvd.i3d={i3d}",
            f"fvd.reference={tmp_path / 'ref' / 'videos'}", "seed=1"]
    result = run(cfg_for(over), tmp_path / "eval")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "scores" / "builtin.jsonl").read_text().splitlines()]
    suite = build_suite(cfg_for(over))
    videos = [read_video(tmp_path / "eval" / "videos" / i.file)[0] for i in suite.items]
    mixture = build(cfg_for(over).rewards, "rewards")
    want = RewardScores({t.name: t.model for t in mixture.terms},
                        {t.name: t.num_frames for t in mixture.terms}).score(videos, [i.prompt for i in suite.items])
    assert set(want) == {"toy_image", "toy_video"}
    for term, values in want.items():
        assert [r[f"rewards/{term}"] for r in rows] == pytest.approx(values, abs=1e-6)
        assert result["builtin"][f"rewards/{term}"] == pytest.approx(sum(values) / 3, abs=1e-6)
    reference = [read_video(p)[0] for p in sorted((tmp_path / "ref" / "videos").glob("*.mp4"))]
    assert result["builtin"]["fvd"] == pytest.approx(FVD(i3d).score_set(videos, reference), rel=1e-9)
    assert "fvd" not in rows[0]                                                     # a set statistic
    with pytest.raises(ConfigError, match="metrics=\\[fvd\\] needs fvd.i3d"):
        run(cfg_for(["suite.num_prompts=3", "metrics=[fvd]", "stage=score"]), tmp_path / "eval")
    with pytest.raises(ConfigError, match="metrics=\\[rewards\\] needs reward models"):
        run(cfg_for(["suite.num_prompts=3", "metrics=[rewards]", "stage=score"]), tmp_path / "eval")


def test_a_student_folder_samples_as_its_sampler_json_says(tmp_path):
    """lora=<run>/student with no sampler keys: the manifest records the student's own sampler, and
    each file is what turbo-generate's stage draws for that prompt and seed."""
    from tests.turbo.test_generate import SAMPLERS, perturbed_student
    from turbo.generate import load
    from turbo.video import write_video

    folder = tmp_path / "run" / "student"
    perturbed_student("toy_t2v", folder)                                  # consistency, 2 steps, w = 3
    # crf=0: only lossless files can be compared exactly (lossy x264 varies between encodes)
    run(cfg_for([f"lora={folder}", "suite.num_prompts=2", "stage=sample", "crf=0"]), tmp_path / "eval")
    item = build_suite(cfg_for([])).items[1]
    row = read_manifest(tmp_path / "eval")[item.file]
    assert row["lora"] == str(folder) and row["sampler"] == SAMPLERS["consistency"].to_dict()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        pipe = load(compose("generate", overrides=["model=toy_t2v", f"lora={folder}"]))
    assert pipe.sampler == SAMPLERS["consistency"]
    want = pipe.video([item.prompt], 9, 32, 32, torch.Generator().manual_seed(item.seed))[0]
    write_video(tmp_path / "want.mp4", want, fps=8, crf=0)
    np.testing.assert_array_equal(frames(tmp_path / "eval" / "videos")[item.file],
                                  read_video(tmp_path / "want.mp4")[0].numpy())
