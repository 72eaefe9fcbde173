"""The toy world's models: the exact pixel-space latent, the word-level text encoder, shipped assets."""

import json
import shutil

import pytest
import torch

from turbo.toy.assets import ChecksumError, asset, register, sha256
from turbo.toy.models import PixelVAE, toy_text_encoder, toy_wan
from turbo.toy.vocab import VOCAB, toy_tokenizer
from turbo.toy.world import CaptionError, ToyWorld


def test_pixel_vae_is_exact_and_roughly_unit_variance():
    vae = PixelVAE(patch=2)
    videos = torch.stack([ToyWorld(num_frames=9, height=32, width=32).sample(i)[1] for i in range(16)])
    z = vae.encode(videos)
    assert z.shape == (16, 12, 9, 16, 16) == (16, *vae.latent_shape(9, 32, 32))
    assert torch.allclose(vae.decode(z), videos, atol=1e-6)
    assert abs(z.mean().item()) < 0.2 and 0.7 < z.std().item() < 1.3
    # a latent channel is one RGB channel of one pixel of each 2x2 cell: channel 0 is red at (0, 0)
    raw = z * vae.std + vae.mean
    assert torch.allclose(raw[:, 0], videos[:, :, 0, ::2, ::2] * 2 - 1, atol=1e-6)
    assert torch.allclose(raw[:, 4 + 3], videos[:, :, 1, 1::2, 1::2] * 2 - 1, atol=1e-6)
    # frames decode independently (a per-frame VAE)
    assert torch.allclose(vae.decode_frames(z, torch.tensor([2, 7])), videos[:, [2, 7]], atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.check_video_size(9, 31, 32)


def test_toy_tokenizer_gives_one_token_per_word():
    tok = toy_tokenizer()
    ids = tok("An Orange triangle moving up").input_ids
    assert ids == [VOCAB["an"], VOCAB["orange"], VOCAB["triangle"], VOCAB["moving"], VOCAB["up"], VOCAB["</s>"]]


def test_toy_text_encoder_refuses_captions_outside_the_grammar():
    text = toy_text_encoder()
    cond = text(["a red circle moving left", ""])
    assert cond.embeds.shape == (2, 16, 32) and cond.mask[0].sum() == 6 and cond.mask[1].sum() == 1
    with pytest.raises(CaptionError, match="expected a colour.*found 'purple'"):
        text(["a purple circle moving left"])
    with pytest.raises(CaptionError, match="expected a motion"):
        text(["a red circle moving sideways"])


def test_toy_backbone_is_the_wan_architecture():
    backbone = toy_wan()
    assert type(backbone).__name__ == "WanTransformer3DModel"
    assert 2e5 < sum(p.numel() for p in backbone.parameters()) < 2e6


def test_toy_backbone_starts_from_a_saved_folder_with_new_input_channels_at_zero(tmp_path):
    source = toy_wan(seed=3)
    source.save_pretrained(tmp_path / "teacher" / "transformer")
    backbone = toy_wan(seed=0, in_channels=25, out_channels=12, init=str(tmp_path / "teacher"))
    own, theirs = backbone.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], v) for k, v in theirs.items() if k != "patch_embedding.weight")
    assert torch.equal(own["patch_embedding.weight"][:, :12], theirs["patch_embedding.weight"])
    assert own["patch_embedding.weight"][:, 12:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"model.backbone.init=.*\(the architecture numbers must match\)"):
        toy_wan(head_dim=32, init=str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match=r"model.backbone.init='.*nowhere' is neither a shipped toy teacher"):
        toy_wan(init=str(tmp_path / "nowhere"))


def test_assets_register_then_verify_and_name_a_corrupt_file(tmp_path):
    folder = tmp_path / "thing"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights.bin").write_bytes(b"\x00" * 64)
    (folder / "config.json").write_text("{}")
    entry = register("thing", {"command": "make thing", "seed": 0}, root=tmp_path)
    assert entry["files"]["sub/weights.bin"] == sha256(folder / "sub" / "weights.bin")
    assert asset("thing", root=tmp_path) == folder
    data = bytearray((folder / "sub" / "weights.bin").read_bytes())
    data[10] ^= 1
    (folder / "sub" / "weights.bin").write_bytes(bytes(data))
    other = tmp_path / "copy"
    shutil.copytree(tmp_path, other, ignore=shutil.ignore_patterns("copy"))
    with pytest.raises(ChecksumError, match=r"weights\.bin fails its checksum.*make thing"):
        asset("thing", root=other)
    (other / "thing" / "config.json").unlink()
    manifest = json.loads((other / "MANIFEST.json").read_text())
    assert "config.json" in manifest["thing"]["files"]
    with pytest.raises(KeyError, match="no shipped toy asset 'nothing'"):
        asset("nothing", root=other)
