"""rewards.aesthetic: heads told apart by their keys, the score by hand, loading, full-size layout."""


import pytest
import torch
from open_clip.transformer import QuickGELU

from rewards.aesthetic import (
    AestheticReward,
    aesthetic_clip_model,
    aesthetic_head,
    aesthetic_reward,
    head_kind,
    tiny_aesthetic_reward,
)
from rewards.base import OPENAI_MEAN, OPENAI_STD, RewardInputError, RewardModel, preprocess_images
from rewards.clip import tiny_clip_model
from rewards.loading import CheckpointMismatchError
from tests.rewards.test_base import as_uint8, edge_image, smooth_image
from tests.rewards.test_loading import LAYOUTS, layout_mismatches

HEADS = LAYOUTS["aesthetic_heads"]


def random_video(b=2, f=3, h=40, w=56, seed=0):
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def openai_clip_preprocess(pil, size=224):
    """OpenAI CLIP's preprocess (clip.load), which improved-aesthetic-predictor uses: PIL resize + crop."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])(pil)


@pytest.mark.parametrize("hw", [(320, 512), (480, 848), (45, 70)])
def test_preprocessing_matches_openai_clip_pil_pipeline(hw):
    reward = tiny_aesthetic_reward(image_size=224)
    assert reward.match_pil
    for img in (smooth_image(*hw), edge_image(*hw), torch.rand(3, *hw, generator=torch.Generator().manual_seed(1))):
        x, pil = as_uint8(img)
        ours = preprocess_images(x[None], reward.image_size, reward.mean, reward.std, match_pil=reward.match_pil)[0]
        # Measured: 0.0 (bit-exact with PIL's resize). Before Pillow's fixed-point resampling was
        # reproduced: max 0.0124-0.0160, mean <= 0.0046, PIL's uint8 rounding between its passes.
        torch.testing.assert_close(ours, openai_clip_preprocess(pil), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "mlp", "mlp_relu"])
def test_reference_head_layouts_are_recognised(kind):
    widths = (768, 1) if kind == "linear" else (768, 1024, 128, 64, 16, 1)
    with torch.device("meta"):
        head = aesthetic_head(kind, widths)
    state = head.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == HEADS[kind]
    assert head_kind(state) == kind


def test_unknown_head_layout_is_refused():
    with pytest.raises(ValueError, match="expected an aesthetic head state dict.*found 2 keys"):
        head_kind({"layers.0.weight": torch.zeros(1), "layers.1.weight": torch.zeros(1)})


def hand_score(reward: AestheticReward, video: torch.Tensor) -> torch.Tensor:
    """The reference computation, written out: normalised image features through the head's matrices."""
    with torch.no_grad():
        pixels = preprocess_images(video.flatten(0, 1), 32, OPENAI_MEAN, OPENAI_STD, match_pil=True)
        x = reward.visual(pixels)
        x = x / x.norm(dim=-1, keepdim=True)
        linears = [m for m in reward.head.modules() if isinstance(m, torch.nn.Linear)]
        relu = any(isinstance(m, torch.nn.ReLU) for m in reward.head.modules())
        for i, lin in enumerate(linears):
            x = x @ lin.weight.T + lin.bias
            if relu and i < len(linears) - 1:
                x = x.clamp(min=0)
        return x.view(video.shape[0], video.shape[1]).mean(1)


@pytest.mark.parametrize("kind", ["linear", "mlp", "mlp_relu"])
def test_score_equals_hand_computation_and_ignores_the_prompt(kind):
    reward = tiny_aesthetic_reward(seed=1, head=kind)
    video = random_video()
    scores = reward(video, ["a cat", "a dog"])
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, hand_score(reward, video), atol=1e-6, rtol=0)
    torch.testing.assert_close(reward(video, ["", "something else entirely"]), scores, atol=0, rtol=0)
    with pytest.raises(RewardInputError, match="reward 'aesthetic'.*expected 2 prompts"):
        reward(video, ["only one"])


def test_relu_head_differs_from_the_linear_mlp_with_the_same_weights():
    plain, relu = tiny_aesthetic_reward(seed=1, head="mlp"), tiny_aesthetic_reward(seed=1, head="mlp_relu")
    linears = [m for m in relu.head.modules() if isinstance(m, torch.nn.Linear)]
    for src, dst in zip([m for m in plain.head.modules() if isinstance(m, torch.nn.Linear)], linears):
        dst.load_state_dict(src.state_dict())
    video = random_video()
    assert not torch.allclose(plain(video, ["a", "b"]), relu(video, ["a", "b"]))


def test_gradient_reaches_pixels_and_dropout_stays_off():
    reward = tiny_aesthetic_reward(seed=0, head="mlp")
    reward.train()
    assert not any(m.training for m in reward.modules())
    video = random_video().requires_grad_(True)
    first = reward(video, ["a", "b"])
    first.sum().backward()
    assert torch.isfinite(video.grad).all() and (video.grad.flatten(2).abs().amax(-1) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
    torch.testing.assert_close(reward(video, ["a", "b"]), first, atol=0, rtol=0)  # deterministic
    assert isinstance(reward, RewardModel) and reward.kind == "image"


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_aesthetic_reward_loads_local_files(tmp_path, tiny_arch, kind):
    source = tiny_aesthetic_reward(seed=4, head=kind)
    clip = tiny_clip_model(4)  # its image tower is source.visual's twin: same seed
    # As OpenAI's TorchScript state dict: three non-weight entries ride along.
    extras = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    torch.save({**clip.state_dict(), **extras}, tmp_path / "ViT-L-14.pt")
    torch.save(source.head.state_dict(), tmp_path / "head.pth")
    reward = aesthetic_reward(str(tmp_path / "ViT-L-14.pt"), str(tmp_path / "head.pth"), arch=tiny_arch, quick_gelu=False)
    assert reward.image_size == 32 and not hasattr(reward, "model")  # only the image tower is kept
    video = random_video()
    torch.testing.assert_close(reward(video, ["a", "b"]), source(video, ["a", "b"]), atol=1e-6, rtol=0)


def test_aesthetic_reward_errors_name_the_config_keys(tmp_path, tiny_arch):
    clip = tiny_clip_model(4)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    torch.save(torch.nn.Linear(16, 1).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="head in .*narrow.pth.* takes 16 features, .* gives 32"):
        aesthetic_reward(str(tmp_path / "clip.pt"), str(tmp_path / "narrow.pth"), arch=tiny_arch)
    torch.save({"fc.weight": torch.zeros(1, 32)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="reward.aesthetic.model.head_checkpoint.*expected an aesthetic head"):
        aesthetic_reward(str(tmp_path / "clip.pt"), str(tmp_path / "odd.pth"), arch=tiny_arch)
    state = clip.state_dict()
    state.pop("visual.proj")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match=r"reward.aesthetic.model.clip_checkpoint.*\[visual.proj\]"):
        aesthetic_reward(str(tmp_path / "broken.pt"), str(tmp_path / "narrow.pth"), arch=tiny_arch)
    with pytest.raises(FileNotFoundError, match="set reward.aesthetic.model.head_checkpoint="):
        aesthetic_reward(str(tmp_path / "clip.pt"), str(tmp_path / "absent.pth"), arch=tiny_arch)


def test_full_size_layout_matches_openai_vit_l_14():
    with torch.device("meta"):
        clip = aesthetic_clip_model("ViT-L-14", device="meta")
    assert layout_mismatches(clip, LAYOUTS["aesthetic_open_clip_vit_l_14"]) == []
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)  # as OpenAI trained it
    assert clip.visual.output_dim == HEADS["linear"]["weight"][1] == HEADS["mlp"]["layers.0.weight"][1] == 768
