"""rewards.toy: the shipped toy rewards see what they should on held-out prompts, pass gradients,
refuse corrupt files, their recipe still trains, and reward=toy trains a student."""

import shutil

import pytest
import torch

from rewards.base import RewardInputError
from rewards.toy import ASSETS, ToyImageText, ToyRewardConfig, ToyVideoText, load_toy_reward, resample_time
from rewards.toy_train import ranking_accuracy, train_toy_reward
from turbo.toy import assets
from turbo.toy.assets import ChecksumError
from turbo.toy.split import split_specs
from turbo.toy.world import ToyWorld

MAX_ASSET_BYTES = 1.5 * 2**20  # each toy reward; all shipped toy weights share assets.MAX_TOTAL_BYTES


@pytest.fixture(scope="module")
def image_reward() -> ToyImageText:
    return load_toy_reward("image")


@pytest.fixture(scope="module")
def video_reward() -> ToyVideoText:
    return load_toy_reward("video")


def clips(caption_spec_index: int = 0, n: int = 2, frames: int = 9) -> tuple[list[str], torch.Tensor]:
    """n held-out clips of one spec: (captions, n,F,3,32,32 in [0, 1])."""
    spec = split_specs()[1][caption_spec_index]
    world = ToyWorld(num_frames=frames, seed=7, specs=[spec])
    return [spec.caption()] * n, torch.stack([world.sample(i)[1] for i in range(n)])


# (a), (b): what each reward can and cannot see, on prompts the recipe never trained on -------------

def test_heldout_prompts_are_not_training_prompts():
    train, held_out = split_specs()
    assert len(held_out) == 24 and not set(train) & set(held_out)


@pytest.mark.parametrize("attribute", ["colour", "shape"])
def test_image_reward_ranks_true_colour_and_shape_first_on_heldout_prompts(image_reward, attribute):
    # 24 held-out specs x 8 clips. Measured: 1.0 against a random wrong value, 1.0 against all of them.
    assert ranking_accuracy(image_reward, attribute) >= 0.9
    assert ranking_accuracy(image_reward, attribute, all_alternatives=True) >= 0.9


def test_video_reward_ranks_true_motion_first_and_image_reward_cannot(image_reward, video_reward):
    # Measured: video 1.0 (random wrong motion) and 1.0 (all four wrong motions); image 0.0: its
    # scores tie exactly, as motion words never reach its text tower.
    assert ranking_accuracy(video_reward, "motion") >= 0.9
    assert ranking_accuracy(video_reward, "motion", all_alternatives=True) >= 0.9
    assert ranking_accuracy(image_reward, "motion") < 0.7


def test_video_reward_also_sees_colour_and_shape(video_reward):
    # Measured: colour 1.0, shape 0.98 (not a requirement of a video reward, but it is trained on them).
    assert ranking_accuracy(video_reward, "colour") >= 0.9
    assert ranking_accuracy(video_reward, "shape") >= 0.9


def test_image_score_is_exactly_invariant_to_motion_words(image_reward, video_reward):
    _, video = clips(n=1)
    motions = ["a red circle moving left", "a red circle standing still", "a red circle moving up", "a red circle"]
    image = torch.cat([image_reward(video, [m]) for m in motions])
    assert torch.equal(image, image[:1].expand(4))
    video_scores = torch.cat([video_reward(video, [m]) for m in motions[:3]])
    assert video_scores.unique().numel() == 3  # the video reward reads them


def test_scores_are_cosines(image_reward, video_reward):
    captions, video = clips(n=3)
    for reward in (image_reward, video_reward):
        score = reward(video, captions)
        assert score.shape == (3,) and score.dtype == torch.float32
        assert ((score > 0.3) & (score <= 1.0)).all()  # measured: 0.66-0.97 for true captions


# (c): gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 9, 3, 32, 32), (2, 5, 3, 48, 40), (1, 17, 3, 24, 24)])
def test_gradients_reach_the_video_at_any_size(image_reward, video_reward, shape):
    video = torch.rand(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    prompts = ["a red circle moving left", "an orange triangle standing still"][: shape[0]]
    for reward in (image_reward, video_reward):
        (grad,) = torch.autograd.grad(reward(video, prompts).sum(), video)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize("kind", ["image", "video"])
def test_pixel_gradients_point_uphill_towards_the_target_caption(kind, image_reward, video_reward):
    """Gradients reach the pixels and a small step along them raises the target caption's score
    (first order). The rewards are trained to resist large pixel attacks (rewards/toy_train.py), so a
    many-step ascent is measured by eval.reward_attack, not asserted here."""
    reward = image_reward if kind == "image" else video_reward
    _, video = clips(n=2)  # held-out spec 0: a magenta triangle moving left
    target = ["a green triangle moving left"] * 2 if kind == "image" else ["a magenta triangle moving right"] * 2
    x = (0.01 + 0.98 * video).requires_grad_(True)  # a margin of 0.01: the steps below (norm 1e-2) stay in [0, 1]
    (grad,) = torch.autograd.grad(reward(x, target).sum(), x)
    assert grad.abs().sum() > 0
    step = 1e-2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        assert (reward(x + step, target) > reward(x, target)).all()
        assert (reward(x - step, target) < reward(x, target)).all()


def test_resample_time_interpolates_linearly_between_first_and_last_frame():
    video = torch.arange(9.0).view(1, 9, 1, 1, 1).expand(1, 9, 3, 2, 2)
    assert resample_time(video, 9) is video
    assert resample_time(video, 5)[0, :, 0, 0, 0].tolist() == [0, 2, 4, 6, 8]
    short = video[:, ::2]  # 5 frames, times 0 2 4 6 8
    assert resample_time(short, 9)[0, :, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert resample_time(video[:, :1], 3)[0, :, 0, 0, 0].tolist() == [0, 0, 0]


def test_bad_input_is_refused_with_the_contract(image_reward):
    with pytest.raises(RewardInputError, match="expected 2 prompts"):
        image_reward(torch.rand(2, 3, 3, 32, 32), ["a red circle"])
    with pytest.raises(RewardInputError, match="at most 15"):
        image_reward(torch.rand(1, 3, 3, 32, 32), [" ".join(["a red circle moving left and"] * 4)])
    with pytest.raises(ValueError, match="reward.\\*.model.kind: expected 'image' or 'video', found 'audio'"):
        load_toy_reward("audio")


# (d): shipped files are checked ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["image", "video"])
def test_corrupt_shipped_file_raises_checksum_error_naming_it(tmp_path, kind):
    name = ASSETS[kind]
    shutil.copytree(assets.WEIGHTS / name, tmp_path / name)
    shutil.copy(assets.MANIFEST, tmp_path / "MANIFEST.json")
    cls = ToyImageText if kind == "image" else ToyVideoText
    cls.from_asset(root=tmp_path)  # an intact copy loads
    target = tmp_path / name / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assets._verified.clear()  # the intact copy was verified in this process
    with pytest.raises(ChecksumError, match=f"{name}/model.safetensors fails its checksum"):
        cls.from_asset(root=tmp_path)
    (tmp_path / name / "config.json").unlink()
    with pytest.raises(ChecksumError, match=f"{name}/config.json is missing"):
        assets.asset(name, root=tmp_path)


def test_shipped_assets_are_small_and_say_how_they_were_made():
    entries = assets.manifest()
    for kind, name in ASSETS.items():
        files = entries[name]["files"]
        assert set(files) == {"config.json", "model.safetensors"}
        assert sum((assets.WEIGHTS / name / f).stat().st_size for f in files) < MAX_ASSET_BYTES
        recipe = entries[name]["recipe"]
        assert recipe["command"].startswith((f"python -m rewards.toy --kind {kind} ",
                                             f"python -m rewards.toy_train --kind {kind} "))
        assert {"seed", "steps", "final_loss", "date", "first_losses"} <= set(recipe)
        assert ToyRewardConfig.from_json(assets.WEIGHTS / name / "config.json").kind == kind


def test_config_json_with_an_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"kind": "image", "embed_dims": 64}')
    with pytest.raises(ValueError, match="config.json: expected keys .* found \\['embed_dims', 'kind'\\]"):
        ToyRewardConfig.from_json(path)


# (e): the recipe still does what it recorded ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["image", "video"])
def test_recipe_reproduces_its_first_losses_and_learns(kind, monkeypatch):
    import rewards.toy as toy

    recipe = assets.manifest()[ASSETS[kind]]["recipe"]
    robust = {k: recipe[k] for k in ("robust", "negatives", "pool_size", "attack_steps", "attack_step_size", "pool_age",
                                     "hinge", "align") if k in recipe}
    seen: list[str] = []
    real_tokenize = toy.tokenize
    monkeypatch.setattr(toy, "tokenize", lambda prompts, drop: (seen.extend(prompts), real_tokenize(prompts, drop))[1])
    result = train_toy_reward(kind, 30, recipe["seed"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                              weight_decay=recipe["weight_decay"], warmup=recipe["warmup"], noise=recipe["noise"],
                              **robust)
    # Recorded with 1 thread; other thread counts reorder float sums (seen: ~1e-6 relative).
    assert result.losses[:5] == pytest.approx(recipe["first_losses"], rel=1e-3)
    assert sum(result.losses[-5:]) / 5 < 0.75 * sum(result.losses[:5]) / 5
    # every caption it trained on (positives and hard negatives) is a training-split caption
    held_out = {s.caption() for s in split_specs()[1]}
    assert seen and not held_out & set(seen)


# (f): reward=toy composes and trains a student ---------------------------------------------------------

def test_toy_mixture_trains_a_student_and_logs_each_term(tmp_path):
    from distill.train import run_training
    from tests.distill.test_train import cfg_for, metrics
    from turbo.config import build

    cfg = cfg_for("reward=toy", "train.steps=2")
    mixture = build(cfg.reward, "reward")
    assert [(t.name, t.model.kind, t.weight, t.num_frames) for t in mixture.terms] == [
        ("toy_image", "image", 1.0, 3), ("toy_video", "video", 2.0, 9)]
    run_training(cfg, tmp_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    row = rows[0]
    assert row["reward/toy_image"] == pytest.approx(-1.0 * row["score/toy_image"], rel=1e-5)
    assert row["reward/toy_video"] == pytest.approx(-2.0 * row["score/toy_video"], rel=1e-5)
    assert row["student/loss"] == pytest.approx(row["cd"] + row["reward/toy_image"] + row["reward/toy_video"], rel=1e-5)
    assert -1.0 <= row["score/toy_image"] <= 1.0 and -1.0 <= row["score/toy_video"] <= 1.0


def test_score_candidates_equals_pairwise_scores(image_reward, video_reward):
    _, video = clips(n=2)
    candidates = ["a magenta triangle moving left", "a red square moving up", "a cyan circle standing still"]
    for reward in (image_reward, video_reward):
        table = reward.score_candidates(video, candidates)
        pairwise = torch.stack([torch.cat([reward(v[None], [c]) for c in candidates]) for v in video])
        torch.testing.assert_close(table, pairwise, atol=1e-6, rtol=0)


# (g): the robust recipe's negatives -----------------------------------------------------------------

def test_simple_negatives_are_noise_blank_blur_or_partial_and_stay_in_range():
    from rewards.toy_train import simple_negatives
    from turbo.toy.world import BACKGROUND

    _, real = clips(n=16)
    neg = simple_negatives(real, torch.Generator().manual_seed(0), partial=True)
    assert neg.shape == real.shape and neg.min() >= 0 and neg.max() <= 1
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    # partial clips keep the real frames outside the erased run and erase it inside
    partial = [i for i in range(16) if (neg[i] == real[i]).flatten(1).all(1).any() and not torch.equal(neg[i], real[i])]
    assert partial
    i = partial[0]
    erased = ~(neg[i] == real[i]).flatten(1).all(1)
    assert torch.allclose(neg[i][erased], bg.expand_as(neg[i][erased]))
    assert not torch.equal(neg, real)


def test_the_attack_pool_climbs_the_current_model_and_restarts_old_entries():
    from rewards.toy import ToyDualEncoder
    from rewards.toy_train import AttackPool

    torch.manual_seed(0)
    model = ToyDualEncoder(ToyRewardConfig.for_kind("video"))
    pool = AttackPool(4, 9, 32, ["a red circle moving left"], torch.Generator().manual_seed(0), 0.02, age=2)

    def score(video):
        with torch.no_grad():
            v = torch.nn.functional.normalize(model.encode_visual(video), dim=-1)
            t = torch.nn.functional.normalize(model.encode_text(["a red circle moving left"] * len(video)), dim=-1)
            return (v * t).sum(-1)
    start = score(pool.videos.clone())
    video, targets = pool.refine(model, 4, steps=5)
    assert targets == ["a red circle moving left"] * 4 and (score(video) > start).all()
    pool.refine(model, 4, steps=1)
    assert (pool.age == 2).all()
    pool.refine(model, 4, steps=1)  # age reached: restarted before refining
    assert (pool.age == 1).all()


def test_robust_training_runs_and_records_its_settings():
    result = train_toy_reward("video", 3, 0, batch_size=8, robust=True, negatives=4, pool_size=8)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.settings["robust"] and result.settings["pool_size"] == 8


def test_align_adds_one_minus_the_real_clips_cosine_to_the_loss():
    plain = train_toy_reward("image", 1, 0, batch_size=8)
    aligned = train_toy_reward("image", 1, 0, batch_size=8, align=0.5)
    # the same model, batch and draws: the first losses differ by the align term alone, 0.5 * mean(1 - cos),
    # which lies in (0, 1] (cosines in [-1, 1), and a random model's are not all 1)
    gap = aligned.losses[0] - plain.losses[0]
    assert 0 < gap <= 0.5 * 2 and aligned.settings["align"] == 0.5 and "align" not in plain.settings
