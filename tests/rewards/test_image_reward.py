"""rewards.image_reward: ImageReward's key layout, checkpoints, preprocessing, score and T2V-Turbo shaping."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardInputError, RewardModel
from rewards.image_reward import ImageRewardReward, image_reward, load_blip_tokenizer, tiny_blip_tokenizer, tiny_image_reward
from rewards.image_reward_model import (SCORE_MEAN, SCORE_STD, UNUSED_KEYS, ImageRewardConfig, ImageRewardModel,
                                        from_official, tiny_image_reward_model, to_official)
from rewards.internvideo2 import TINY_VOCAB
from rewards.loading import CheckpointMismatchError, _ignored
from tests.rewards.key_layout import expected_layout, layout_of, meta_model
from tests.rewards.test_base import ONE_UINT8_LEVEL, as_uint8, edge_image, smooth_image

PROMPTS = ["a red circle moving left", "a dog"]


def random_video(b: int = 2, f: int = 3, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def write_vocab(path):
    """bert-base-uncased's vocab.txt format (one token per line) for the tiny vocabulary."""
    path.write_text("\n".join(TINY_VOCAB) + "\n")
    return path


def official_style_state(model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """The model's weights plus what the official file holds beyond the score path."""
    cfg = model.config
    extras = {
        "blip.text_encoder.embeddings.position_ids": torch.arange(cfg.text_positions)[None],
        "blip.vision_proj.weight": torch.randn(256, cfg.vision_width),
        "blip.vision_proj.bias": torch.randn(256),
        "blip.text_proj.weight": torch.randn(256, cfg.text_width),
        "blip.text_proj.bias": torch.randn(256),
    }
    return {**{to_official(k): v.clone() for k, v in model.state_dict().items()}, **extras}


def reward_224(match_pil: bool) -> ImageRewardReward:
    """A tiny model at the official 224 px input (16 px patches), for preprocessing checks."""
    return ImageRewardReward(tiny_image_reward_model(image_size=224, patch_size=16), tiny_blip_tokenizer(), match_pil=match_pil)


def official_pil_transform(size: int = 224):
    """ImageReward.py's _transform(224) (torchvision on a PIL image)."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
        lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


def layout_mismatches(config: ImageRewardConfig) -> list[str]:
    """Keys where the full-size meta model of ``config`` and the official layout (less the skipped keys) differ."""
    official = expected_layout("image_reward")
    ours = {to_official(k): s for k, s in layout_of(meta_model(lambda: ImageRewardModel(config))).items()}
    needed = {k: s for k, s in official.items() if not _ignored(k, UNUSED_KEYS)}
    return sorted(k for k in ours.keys() | needed.keys() if ours.get(k) != needed.get(k))


def test_full_size_layout_is_the_official_checkpoint():
    official = expected_layout("image_reward")
    assert layout_mismatches(ImageRewardConfig.large()) == []
    skipped = sorted(k for k in official if _ignored(k, UNUSED_KEYS))
    assert len(official) == 625 and len(skipped) == 5  # projections (4) and position_ids are unused by the score
    ours = {to_official(k): s for k, s in layout_of(meta_model(lambda: ImageRewardModel(ImageRewardConfig.large()))).items()}
    assert not set(skipped) & ours.keys()
    needed = [k for k in official if not _ignored(k, UNUSED_KEYS)]
    assert all(from_official(k) != k or k.startswith("mlp.") for k in needed)  # every tower key is renamed
    assert all(to_official(from_official(k)) == k for k in needed)
    assert sum(torch.Size(s).numel() for s in ours.values()) == 446_206_689  # 446,666,465 less 459,776 skipped
    # Near misses are caught: BERT's own 30522-token vocabulary; 23 ViT blocks; a 768-wide cross-attention.
    assert layout_mismatches(ImageRewardConfig.large(vocab_size=30522)) == [
        "blip.text_encoder.embeddings.word_embeddings.weight"]
    assert len(layout_mismatches(ImageRewardConfig.large(vision_layers=23))) == 12
    assert len(layout_mismatches(ImageRewardConfig.large(vision_width=768, vision_heads=12, vision_mlp_width=3072))) > 24 * 12


@pytest.mark.parametrize("prefix", ["", "module."])  # as saved, or from the DDP-wrapped training model
def test_official_style_checkpoint_loads_and_scores_identically(tmp_path, prefix):
    source = tiny_image_reward(seed=5)
    path = tmp_path / "ImageReward.pt"
    torch.save({prefix + k: v for k, v in official_style_state(source.model).items()}, path)
    video = random_video()
    want = source(video, PROMPTS)
    vocab = write_vocab(tmp_path / "vocab.txt")
    for loaded in (tiny_image_reward(checkpoint=str(path)), image_reward(str(path), str(vocab), size="tiny")):
        torch.testing.assert_close(loaded(video, PROMPTS), want, atol=0, rtol=0)
    assert (tiny_image_reward(seed=0)(video, PROMPTS) - want).abs().min() > 1e-3


def test_corrupted_checkpoint_raises_mismatch(tmp_path):
    state = official_style_state(tiny_image_reward_model(seed=1))
    missing = {k: v for k, v in state.items() if k != "mlp.layers.7.bias"}
    renamed = dict(state)
    renamed["blip.text_encoder.encoder.layer.0.crossattention.self.key.bias2"] = renamed.pop(
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.bias")
    # cross-attention keys read the image width (32), not the text width (24)
    reshaped = dict(state, **{"blip.text_encoder.encoder.layer.1.crossattention.self.value.weight": torch.zeros(24, 24)})
    for bad, pattern in ((missing, "1 missing key.*mlp.layers.7.bias"), (renamed, "key.bias2"),
                         (reshaped, r"layer.1.crossattention.self.value.weight: checkpoint \(24, 24\) vs model \(24, 32\)")):
        path = tmp_path / "bad.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointMismatchError, match=pattern) as err:
            tiny_image_reward(checkpoint=str(path), name="ir")
        assert "reward.ir.model.checkpoint" in str(err.value)


# Video-frame shapes: 320x512 (VideoCrafter2), portrait, 480x848, tiny (upscaled), square.
@pytest.mark.parametrize("hw", [(320, 512), (512, 320), (480, 848), (45, 70), (256, 256)])
def test_preprocessing_matches_the_official_pil_transform(hw):
    reward, float_pipeline = reward_224(match_pil=True), reward_224(match_pil=False)
    official = official_pil_transform(224)
    noise = torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))
    for kind, img in (("smooth", smooth_image(*hw)), ("edge", edge_image(*hw)), ("noise", noise)):
        x, pil = as_uint8(img)
        want = official(pil)
        # Measured: 0.0 on every shape and image (match_pil reproduces Pillow's fixed-point
        # resampling on the uint8 image, rewards.base.pil_resize_levels).
        torch.testing.assert_close(reward.preprocess(x[None])[0], want, atol=1e-5, rtol=0)
        # Without it (a float pipeline) the error is about one uint8 level on smooth images and
        # up to 0.57 where bicubic overshoots at hard edges or in noise (PIL clips to 0..255).
        plain = (float_pipeline.preprocess(x[None])[0] - want).abs()
        assert plain.mean() <= 0.008 and (kind != "smooth" or plain.max() <= ONE_UINT8_LEVEL + 2e-3)


def test_without_match_pil_equals_t2v_turbos_tensor_transform():
    # T2V-Turbo's get_img_reward_fn: Resize(224, BICUBIC) + CenterCrop(224) + Normalize on decoded float frames.
    reward = reward_224(match_pil=False)
    frames = random_video(b=1, f=2, h=320, w=512)[0]
    t2v = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    torch.testing.assert_close(reward.preprocess(frames), t2v(frames), atol=1e-5, rtol=0)  # measured 0.0
    # match_pil clips bicubic overshoot as PIL does, so on noise the two differ visibly.
    assert (reward_224(match_pil=True).preprocess(frames) - reward.preprocess(frames)).abs().max() > 0.05


def test_score_is_the_normalised_head_of_the_image_grounded_cls():
    reward = tiny_image_reward(seed=3)
    video = random_video()
    m = reward.model
    with torch.no_grad():
        pixels = reward.preprocess(video.flatten(0, 1))
        tok = tiny_blip_tokenizer()(PROMPTS, padding="max_length", max_length=35, truncation=True, return_tensors="pt")
        ids, mask = tok["input_ids"].repeat_interleave(3, 0), tok["attention_mask"].repeat_interleave(3, 0)
        image = m.vision(pixel_values=pixels).last_hidden_state
        cls = m.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image).last_hidden_state[:, 0]
        # The head has no activations (the reference's ReLUs are commented out): one affine map.
        linears = [m.mlp.layers[i] for i in (0, 2, 4, 6, 7)]
        weight, bias = torch.eye(cls.shape[1]), torch.zeros(cls.shape[1])
        for lin in linears:
            weight, bias = lin.weight @ weight, lin.weight @ bias + lin.bias
        raw = cls @ weight.T + bias
        want = ((raw[:, 0] - 0.16717362830052426) / 1.0333394966054072).view(2, 3)
    torch.testing.assert_close(reward.frame_rewards(video, PROMPTS), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(reward(video, PROMPTS), want.mean(1), atol=1e-5, rtol=0)
    assert (SCORE_MEAN, SCORE_STD) == (0.16717362830052426, 1.0333394966054072)


def test_locked_score_of_seeded_tiny_image_reward():
    scores = tiny_image_reward(seed=0)(random_video(), ["a red ball", "a blue cube"])
    torch.testing.assert_close(scores, torch.tensor([-1.516612, -1.070855]), atol=1e-4, rtol=0)


def test_text_encoder_reads_the_image_and_ignores_padding():
    model = tiny_image_reward_model(seed=2)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tok = tiny_blip_tokenizer()
    feats = []
    for length in (20, 35):
        enc = tok(["a red circle", "a red circle"], padding="max_length", max_length=length, return_tensors="pt")
        feats.append(model.text_features(pixels, enc["input_ids"], enc["attention_mask"]))
    torch.testing.assert_close(feats[0], feats[1], atol=1e-5, rtol=0)  # the mask hides the padding
    assert (feats[0][0] - feats[0][1]).abs().max() > 1e-2  # same prompt, different image: cross-attention


def _constant_reward(r: float, relu_form: bool) -> torch.nn.Module:
    """A tiny reward whose normalised score is exactly ``r`` for every frame (last layer: zero weight, bias)."""
    reward = tiny_image_reward(relu_form=relu_form)
    with torch.no_grad():
        reward.model.mlp.layers[7].weight.zero_()
        reward.model.mlp.layers[7].bias.fill_(r * SCORE_STD + SCORE_MEAN)
    return reward


@pytest.mark.parametrize("r,shaped", [(-1.0, -3.0), (0.5, -1.5), (1.9, -0.1), (2.0, 0.0), (3.7, 0.0)])
def test_relu_form_is_t2v_turbos_hinge(r, shaped):
    # T2V-Turbo: score = -relu(2 - r) = min(r, 2) - 2; its loss -w * score is a hinge at r = 2.
    video = random_video()
    torch.testing.assert_close(_constant_reward(r, False)(video, PROMPTS), torch.full((2,), r), atol=1e-5, rtol=0)
    torch.testing.assert_close(_constant_reward(r, True)(video, PROMPTS), torch.full((2,), shaped), atol=1e-5, rtol=0)


def test_relu_form_shapes_each_frame_before_averaging():
    plain, shaped = tiny_image_reward(seed=4), tiny_image_reward(seed=4, relu_form=True)
    video = random_video(b=1, f=4, seed=3).requires_grad_(True)
    for reward in (plain, shaped):  # spread the frames' rewards (random frames of one prompt score alike)
        with torch.no_grad():
            reward.model.mlp.layers[7].weight.mul_(10)
    r = plain.frame_rewards(video, ["a cat"]).detach()[0]
    low, high = r.sort().values[1:3]
    shift = 2.0 - (low + high) / 2  # put the hinge between the 2nd and 3rd frames
    for reward in (plain, shaped):
        with torch.no_grad():
            reward.model.mlp.layers[7].bias.add_(shift * SCORE_STD)
    r = r + shift
    assert (r > 2).sum() == 2 and (r < 2).sum() == 2 and (high - low) > 0.1
    score = shaped(video, ["a cat"])
    torch.testing.assert_close(score, (-F.relu(2 - r)).mean()[None], atol=1e-4, rtol=0)
    assert (score - (-F.relu(2 - r.mean()))).abs().item() > 1e-2  # not the shaping of the mean
    score.sum().backward()
    per_frame = video.grad[0].flatten(1).abs().amax(1)
    assert torch.equal(per_frame > 0, r < 2)  # frames past the hinge get no gradient


def test_gradient_reaches_pixels_and_checkpointing_is_exact():
    video = random_video()
    results = []
    for flag in (False, True):
        reward = tiny_image_reward(seed=2, gradient_checkpointing=flag)
        calls = []
        # pre-hooks of modules inside a layer: a checkpointed layer is re-run in backward (up to the
        # last tensor backward needs, so post-hooks of its last modules may not fire again)
        for inner in (reward.model.vision.encoder.layers[0].mlp, reward.model.text.encoder.layer[0].intermediate):
            inner.register_forward_pre_hook(lambda *_: calls.append(1))
        x = video.clone().requires_grad_(True)
        score = reward(x, PROMPTS)
        forward_calls = len(calls)
        score.sum().backward()
        assert len(calls) == (2 * forward_calls if flag else forward_calls)  # recomputed in backward, or not
        assert (x.grad.flatten(2).abs().amax(-1) > 0).all()  # every frame of every video
        assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
        results.append((score.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=1e-5)


def test_bad_inputs_raise():
    reward = tiny_image_reward(name="ir")
    with pytest.raises(RewardInputError, match="reward 'ir'.*divide by 255"):
        reward(random_video() * 255, PROMPTS)
    with pytest.raises(RewardInputError, match=r"pixel values in \[0, 1\], found min -0.5"):
        reward(random_video() - 0.5, PROMPTS)
    with pytest.raises(RewardInputError, match="5-D video"):
        reward(random_video()[:, 0], PROMPTS)
    with pytest.raises(RewardInputError, match="expected 2 prompts"):
        reward(random_video(), ["one"])


def test_tokenizer_is_blip_bert_uncased_from_local_files(tmp_path):
    tok = tiny_blip_tokenizer()
    assert len(tok) == len(TINY_VOCAB) + 2 == ImageRewardConfig.tiny().vocab_size
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(TINY_VOCAB), len(TINY_VOCAB) + 1]
    ids, mask = tiny_image_reward().tokens(["A Red circle", "z"])
    cls, sep = TINY_VOCAB.index("[CLS]"), TINY_VOCAB.index("[SEP]")
    assert ids.shape == mask.shape == (2, 35) and ids[:, 0].eq(cls).all()  # [CLS] first, no [ENC] swap
    assert ids[1, :3].tolist() == [cls, TINY_VOCAB.index("z"), sep] and mask[1].sum() == 3
    want = tok("A Red circle")["input_ids"]
    (tmp_path / "folder").mkdir()
    write_vocab(tmp_path / "folder" / "vocab.txt")
    for source in (tmp_path / "folder", tmp_path / "folder" / "vocab.txt"):
        assert load_blip_tokenizer(source)("A Red circle")["input_ids"] == want
    with pytest.raises(FileNotFoundError, match="nope.*reward.image_reward.model.tokenizer_path"):
        load_blip_tokenizer(tmp_path / "nope")
    (tmp_path / "short.txt").write_text("\n".join(TINY_VOCAB[:50]) + "\n")
    torch.save(tiny_image_reward_model().state_dict(), tmp_path / "ir.pt")
    with pytest.raises(ValueError, match="has 52 tokens.*30522 \\+ 2"):
        image_reward(str(tmp_path / "ir.pt"), str(tmp_path / "short.txt"), size="tiny")


def test_protocol_frozen_eval_and_seeded():
    state = torch.random.get_rng_state()
    reward, again = tiny_image_reward(seed=0), tiny_image_reward(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(reward.state_dict().values(), again.state_dict().values()))
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert reward.kind == "image" and reward.name == "image_reward" and isinstance(reward, RewardModel)
    with pytest.raises(ValueError, match="size must be one of"):
        image_reward("x.pt", "tok", size="base")
