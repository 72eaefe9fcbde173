"""rewards.viclip: our ViCLIP against the official key layout, checkpoints, the score and its gradient."""

import socket

import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from safetensors.torch import save_file

from rewards.base import RewardInputError, RewardModel
from rewards.clip import tiny_clip_reward
from rewards.loading import CheckpointMismatchError
from rewards.video_text import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames
from rewards.viclip import ViCLIP, ViCLIPConfig, tiny_viclip_model, tiny_viclip_reward, viclip_reward
from tests.rewards.key_layout import expected_layout, layout_of, meta_model


def random_video(b: int = 2, f: int = 8, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def save_official(model: ViCLIP, path, fmt: str) -> None:
    """As the official file: a torch pickle with the state dict under 'model' (or a flat safetensors)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path)) if fmt == "safetensors" else torch.save({"model": state, "epoch": 9}, path)


def test_full_size_layout_is_the_official_checkpoints():
    # Every name and shape of ViClip-InternVid-10M-FLT.pth['model'] (447 entries), nothing more.
    ours = layout_of(meta_model(lambda: ViCLIP(ViCLIPConfig.large())))
    official = expected_layout("viclip")
    assert sorted(ours.keys() - official.keys()) == [] and sorted(official.keys() - ours.keys()) == []
    assert {k: s for k, s in ours.items() if official[k] != s} == {}
    assert len(ours) == 447
    n_params = sum(torch.Size(s).numel() for s in ours.values())
    assert 420e6 < n_params < 440e6  # ViT-L/14 (~303M) + CLIP text 768 x 12 (~123M)


def test_tiny_model_has_the_same_key_names():
    # The tiny test model differs from the official one in sizes only: the same loading code covers both.
    official = expected_layout("viclip")
    tiny = layout_of(tiny_viclip_model(vision_layers=24, text_layers=12))
    assert tiny.keys() == official.keys()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_checkpoint_roundtrip_gives_identical_scores(tmp_path, fmt):
    source = tiny_viclip_reward(seed=5)
    path = tmp_path / f"viclip.{fmt}"
    save_official(source.model, path, fmt)
    video, prompts = random_video(), ["a red circle moving left", "a dog"]
    want = source(video, prompts)
    for loaded in (tiny_viclip_reward(seed=0, checkpoint=str(path)), viclip_reward(str(path), size="tiny")):
        torch.testing.assert_close(loaded(video, prompts), want, atol=0, rtol=0)
    assert not torch.equal(tiny_viclip_reward(seed=0)(video, prompts), want)  # the weights did change


def test_corrupted_checkpoint_raises_mismatch(tmp_path):
    state = {k: v.clone() for k, v in tiny_viclip_model(seed=1).state_dict().items()}
    renamed = dict(state)
    renamed["vision_encoder.ln_post.gain"] = renamed.pop("vision_encoder.ln_post.weight")
    reshaped = dict(state, **{"vision_encoder.temporal_positional_embedding": torch.zeros(1, 4, 32)})
    for bad, pattern in ((renamed, "ln_post.weight"), (reshaped, "temporal_positional_embedding")):
        path = tmp_path / "bad.pth"
        torch.save({"model": bad}, path)
        with pytest.raises(CheckpointMismatchError, match=pattern) as err:
            viclip_reward(str(path), size="tiny", name="vc")
        assert "reward.vc.model.checkpoint" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        viclip_reward(str(tmp_path / "nope.pth"), size="tiny")


def test_score_is_cosine_of_video_and_text_features():
    reward = tiny_viclip_reward(seed=3)
    video, prompts = random_video(), ["a cat", "a dog"]
    model = reward.model
    with torch.no_grad():
        pixels = preprocess_frames(video.flatten(0, 1), 32, IMAGENET_MEAN, IMAGENET_STD).view(2, 8, 3, 32, 32)
        v = F.normalize(model.vision_encoder(pixels.transpose(1, 2)), dim=-1)
        t = F.normalize(model.text_encoder(SimpleTokenizer(context_length=32)(prompts)), dim=-1)
    scores = reward(video, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, (v * t).sum(-1), atol=1e-6, rtol=0)


def test_locked_score_of_seeded_tiny_viclip():
    # Locks preprocessing + both towers + cosine; changes only if one of them does. (Re-locked when
    # preprocessing began rounding frames to uint8 as the reference does: was [0.025434, 0.210811]; and
    # when the blocks became open_clip's, whose constructors draw from the RNG before reset_parameters:
    # was [0.025415, 0.210871], the same weights giving bit-identical features in both.)
    scores = tiny_viclip_reward(seed=0)(random_video(), ["a red ball", "a blue cube"])
    torch.testing.assert_close(scores, torch.tensor([0.303148, 0.361343]), atol=1e-4, rtol=0)


def test_tokenizer_is_openai_clip_bpe_with_32_tokens():
    tokens = tiny_viclip_reward().tokenizer(["a dog", "word " * 40])
    assert tokens.shape == (2, 32)
    assert tokens[0, :4].tolist() == [49406, 320, 1929, 49407] and tokens[0, 4:].eq(0).all()  # SOT a dog EOT
    assert tokens[1, -1] == 49407  # truncated, EOT kept last (InternVid's tokenize(truncate=True))


def test_tokenizer_from_a_local_bpe_file(tmp_path):
    path = tmp_path / "viclip.pth"
    save_official(tiny_viclip_model(), path, "pth")
    reward = viclip_reward(str(path), tokenizer_path=default_bpe(), size="tiny")
    assert reward.tokenizer(["a dog"])[0, :4].tolist() == [49406, 320, 1929, 49407]
    with pytest.raises(FileNotFoundError, match="bpe.gz.*reward.vc.model.tokenizer_path"):
        viclip_reward(str(path), tokenizer_path=str(tmp_path / "bpe.gz"), size="tiny", name="vc")


def test_frame_order_matters_unlike_an_image_reward():
    # Time-reversing a clip turns "moving left" into "moving right". Frame-averaging image rewards
    # cannot tell the two apart; ViCLIP's temporal position embedding can.
    video = random_video(b=1)
    viclip, clip = tiny_viclip_reward(seed=0), tiny_clip_reward(seed=0)
    prompt = ["a ball moving left"]
    assert (viclip(video, prompt) - viclip(video.flip(1), prompt)).abs() > 1e-3  # measured 0.0018
    torch.testing.assert_close(clip(video, prompt), clip(video.flip(1), prompt), atol=1e-6, rtol=0)


def test_gradient_reaches_every_frame():
    reward = tiny_viclip_reward(seed=0)
    video = random_video().requires_grad_(True)
    reward(video, ["a", "b"]).sum().backward()
    assert torch.isfinite(video.grad).all()
    assert (video.grad.flatten(2).abs().amax(-1) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())


def test_gradient_checkpointing_changes_nothing_but_memory():
    video = random_video()
    results = []
    for flag in (False, True):
        reward = tiny_viclip_reward(seed=2, gradient_checkpointing=flag)
        x = video.clone().requires_grad_(True)
        score = reward(x, ["a", "b"])
        score.sum().backward()
        results.append((score.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=1e-5)
    assert tiny_viclip_reward(gradient_checkpointing=True).model.vision_encoder.transformer.grad_checkpointing


@pytest.mark.parametrize("frames", [1, 4, 7, 16])
def test_exactly_eight_frames(frames):
    # The reference adds an 8-slot temporal embedding and fails on other counts; frame selection is
    # the mixture's job (frames: 8, stride), as the InternVid demo samples 8 frames at a stride.
    reward = tiny_viclip_reward(name="vc")
    with pytest.raises(RewardInputError, match=rf"reward 'vc': expected exactly 8 frames .* found {frames}"):
        reward(random_video(f=frames), ["a", "b"])


def test_protocol_frozen_eval_and_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    reward = tiny_viclip_reward()
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert reward.kind == "video" and reward.name == "viclip" and isinstance(reward, RewardModel)
    with pytest.raises(RewardInputError, match="0..255"):
        reward(random_video() * 255, ["a", "b"])


def test_seeded_construction_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_viclip_model(0), tiny_viclip_model(0), tiny_viclip_model(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.vision_encoder.conv1.weight, c.vision_encoder.conv1.weight)


def test_text_features_cached_per_prompt():
    reward = tiny_viclip_reward(seed=0)
    seen: list[str] = []
    tokenize = reward.tokenizer
    reward.tokenizer = lambda texts: (seen.extend(texts), tokenize(texts))[1]
    first = reward(random_video(), ["a", "b"])
    reward(random_video(b=3), ["b", "a", "c"])
    assert seen == ["a", "b", "c"]
    reward.to(torch.float64)
    assert not reward._prompt_cache
    torch.testing.assert_close(reward(random_video(), ["a", "b"]), first, atol=1e-5, rtol=0)
