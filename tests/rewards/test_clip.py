"""rewards.clip: the frozen CLIP reward on tiny seeded open_clip models (offline, CPU)."""

import copy
import socket

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardInputError, RewardModel, preprocess_images
from rewards.clip import CLIPReward, open_clip_reward, tiny_clip_reward

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.15, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1)}


def caption(colour: str) -> str:
    return f"a {colour} image"


def blob_images(colour: str, n: int, g: torch.Generator, h: int = 40, w: int = 48) -> torch.Tensor:
    """n,3,H,W in [0, 1]: a disc of `colour` at a random place and size on a random grey background."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    cy, cx, r = torch.rand(3, n, 1, 1, generator=g)
    disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.15 + 0.25 * r) ** 2).float()[:, None]
    grey = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    return disc * torch.tensor(COLOURS[colour]).view(1, 3, 1, 1) + (1 - disc) * grey


def random_video(b: int = 2, f: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def train_colour_clip(steps: int = 60) -> CLIPReward:
    """A tiny CLIP trained for `steps` AdamW steps (~1 s) to tell the four colours apart."""
    base = tiny_clip_reward(seed=0)
    model = copy.deepcopy(base.model).requires_grad_(True).train()
    names = list(COLOURS)
    tokens = base.tokenizer([caption(c) for c in names])
    labels = torch.arange(len(names)).repeat_interleave(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images = torch.cat([blob_images(c, 4, g) for c in names])  # 16 images, 4 per colour
        image = F.normalize(model.encode_image(preprocess_images(images, 32, OPENAI_MEAN, OPENAI_STD)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        # CLIP's InfoNCE, image -> caption direction (each caption has 4 positives in the batch).
        loss = F.cross_entropy(model.logit_scale.exp() * image @ text.T, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return CLIPReward(model, base.tokenizer, image_size=32)


@pytest.fixture(scope="module")
def trained_reward() -> CLIPReward:
    return train_colour_clip()


def test_trained_reward_prefers_matching_caption(trained_reward):
    g = torch.Generator().manual_seed(123)  # held-out images
    for colour in COLOURS:
        video = blob_images(colour, 2, g)[None]  # 1 video of 2 frames
        scores = {other: trained_reward(video, [caption(other)]).item() for other in COLOURS}
        # Measured (seeded): matching 0.71-0.85, best mismatch 0.36-0.99 below it.
        assert all(scores[colour] > scores[o] + 0.2 for o in COLOURS if o != colour), (colour, scores)


def test_pixel_gradient_ascent_raises_target_score(trained_reward):
    video = blob_images("green", 1, torch.Generator().manual_seed(7))[None].requires_grad_(True)
    target = [caption("red")]
    start = trained_reward(video, target).item()
    x = video.detach().clone().requires_grad_(True)
    for _ in range(10):
        (grad,) = torch.autograd.grad(trained_reward(x, target).sum(), x)
        with torch.no_grad():
            x += 0.02 * grad.sign()
            x.clamp_(0, 1)
    end = trained_reward(x, target).item()
    assert end > start + 0.5, (start, end)  # measured -0.88 -> 0.58
    assert x[:, :, 0].mean() > video[:, :, 0].mean() + 0.05  # and the picture got redder (0.44 -> 0.56)


def test_score_is_mean_frame_cosine():
    reward = tiny_clip_reward(seed=3)
    video, prompts = random_video(), ["a cat", "a dog"]
    model = reward.model
    with torch.no_grad():
        pixels = preprocess_images(video.flatten(0, 1), 32, OPENAI_MEAN, OPENAI_STD)
        image = F.normalize(model.encode_image(pixels), dim=-1).view(2, 3, -1)
        text = F.normalize(model.encode_text(open_clip.tokenizer.SimpleTokenizer(context_length=32)(prompts)), dim=-1)
        expected = torch.einsum("bfd,bd->bf", image, text).mean(1)
    scores = reward(video, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert scores.abs().max() <= 1


def test_locked_score_of_seeded_tiny_clip():
    # Locks preprocessing + encoders + cosine; changes only if any of them changes.
    scores = tiny_clip_reward(seed=0)(random_video(), ["a red ball", "a blue cube"])
    torch.testing.assert_close(scores, torch.tensor([0.154730, 0.287255]), atol=1e-4, rtol=0)


def test_gradient_reaches_pixels():
    reward = tiny_clip_reward(seed=0)
    video = random_video().requires_grad_(True)
    reward(video, ["a", "b"]).sum().backward()
    grad = video.grad
    assert torch.isfinite(grad).all()
    assert (grad.flatten(2).abs().amax(-1) > 0).all()  # every frame of every video gets gradient
    assert all(p.grad is None for p in reward.parameters())


def test_frozen_and_always_eval():
    reward = tiny_clip_reward(seed=0)
    assert not any(p.requires_grad for p in reward.parameters())
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert reward.kind == "image" and reward.name == "clip" and isinstance(reward, RewardModel)


def test_seeded_construction_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_clip_reward(seed=0), tiny_clip_reward(seed=0), tiny_clip_reward(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.visual.conv1.weight"], sc["model.visual.conv1.weight"])


def test_text_features_are_cached_per_prompt():
    reward = tiny_clip_reward(seed=0)
    seen: list[str] = []
    tokenize = reward.tokenizer
    reward.tokenizer = lambda texts: (seen.extend(texts), tokenize(texts))[1]
    first = reward(random_video(), ["a", "b"])
    second = reward(random_video(b=3), ["b", "a", "c"])
    assert seen == ["a", "b", "c"]  # each prompt tokenised and encoded once
    assert torch.equal(first, reward(random_video(), ["a", "b"]))
    reward.to(torch.float64)  # a dtype/device move must not serve stale features
    assert not reward._prompt_cache
    torch.testing.assert_close(reward(random_video(b=3), ["b", "a", "c"]), second, atol=1e-5, rtol=0)


def test_scoring_under_inference_mode_does_not_poison_the_cache():
    # An eval harness scoring under inference_mode, then training with the same reward.
    reward = tiny_clip_reward(seed=0)
    with torch.inference_mode():
        scores = reward(random_video(), ["a", "b"])
    video = random_video().requires_grad_(True)
    reward(video, ["a", "b"]).sum().backward()
    assert video.grad.abs().sum() > 0
    torch.testing.assert_close(reward(random_video(), ["a", "b"]), scores.clone(), atol=0, rtol=0)


def test_rejects_bad_input_with_reward_name():
    reward = tiny_clip_reward(seed=0, name="clip_h")
    with pytest.raises(RewardInputError, match="reward 'clip_h'.*0..255"):
        reward(random_video() * 255, ["a", "b"])


def test_tokenizer_and_model_build_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    reward = tiny_clip_reward(seed=0)
    assert reward(random_video(b=1), ["a red image"]).isfinite().all()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_roundtrip(tmp_path, suffix):
    source = tiny_clip_reward(seed=5)
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = tiny_clip_reward(seed=0, checkpoint=str(path))
    video = random_video()
    torch.testing.assert_close(loaded(video, ["x", "y"]), source(video, ["x", "y"]), atol=0, rtol=0)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        tiny_clip_reward(checkpoint=missing)
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*local checkpoint file path"):
        open_clip_reward("ViT-H-14", missing)
    with pytest.raises(FileNotFoundError, match="local checkpoint"):
        open_clip_reward("ViT-H-14", "laion2b_s32b_b79k")  # a pretrained tag would download: refused


def test_open_clip_reward_loads_local_checkpoint(tmp_path, tiny_arch):
    source = tiny_clip_reward(seed=9)
    ckpt = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(ckpt))

    reward = open_clip_reward(tiny_arch, str(ckpt), name="clip_tiny")
    assert reward.image_size == 32 and reward.mean == OPENAI_MEAN and reward.std == OPENAI_STD
    assert reward.name == "clip_tiny" and not any(p.requires_grad for p in reward.parameters())
    video = random_video()
    torch.testing.assert_close(reward(video, ["a", "b"]), source(video, ["a", "b"]), atol=1e-6, rtol=0)
