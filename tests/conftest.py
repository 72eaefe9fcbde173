"""Shared fixtures: local stand-ins for the checkpoints real configs point at."""

import json

import pytest
import torch

from turbo.models import (tiny_clip_text_encoder, tiny_hunyuan, tiny_hunyuan_text_encoder, tiny_hunyuan_vae, tiny_sd3,
                          tiny_sd3_text_encoder, tiny_sd_vae, tiny_sdxl_text_encoder, tiny_text_encoder, tiny_unet2d,
                          tiny_unet3d, tiny_wan, tiny_wan_vae)


def save_diffusers_folder(folder, subfolder, backbone, vae, text, model_index=None):
    """A diffusers-format model folder: <subfolder>/ (transformer or unet), vae/, and each text
    encoder with its tokenizer (text_encoder/ + tokenizer/, text_encoder_2/ + tokenizer_2/, ...)."""
    backbone.save_pretrained(folder / subfolder)
    vae.vae.save_pretrained(folder / "vae")
    for suffix, name in (("", "model"), ("_2", "model_2"), ("_3", "model_3")):
        if hasattr(text, name):
            getattr(text, name).save_pretrained(folder / f"text_encoder{suffix}")
            getattr(text, f"tokenizer{suffix}").save_pretrained(folder / f"tokenizer{suffix}")
    if model_index is not None:
        (folder / "model_index.json").write_text(json.dumps(model_index))
    return folder


# real model config -> the tiny stand-in folder its model.path points at (tiny_wan's folder otherwise)
REAL_MODEL_FOLDERS = {
    "wan2.1_i2v_14b_480p": lambda: ("transformer", tiny_wan(in_channels=36, out_channels=16, image_dim=32),
                                    tiny_wan_vae(), tiny_text_encoder()),
    "hunyuanvideo_t2v": lambda: ("transformer", tiny_hunyuan(), tiny_hunyuan_vae(), tiny_hunyuan_text_encoder()),
    "hunyuanvideo_i2v": lambda: ("transformer", tiny_hunyuan(in_channels=33, out_channels=16, guidance_embeds=False,
                                                             image_condition_type="latent_concat"),
                                 tiny_hunyuan_vae(), tiny_hunyuan_text_encoder()),
    "modelscope_t2v": lambda: ("unet", tiny_unet3d(), tiny_sd_vae(), tiny_clip_text_encoder()),
    "sd15": lambda: ("unet", tiny_unet2d(), tiny_sd_vae(), tiny_clip_text_encoder()),
    "sdxl": lambda: ("unet", tiny_unet2d(cross_attention_dim=64, pooled_dim=32), tiny_sd_vae(scaling_factor=0.13025),
                     tiny_sdxl_text_encoder()),
    "sd3_medium": lambda: ("transformer", tiny_sd3(), tiny_sd_vae(latent_channels=16, scaling_factor=1.5305,
                                                                  shift_factor=0.0609), tiny_sd3_text_encoder()),
}


@pytest.fixture(scope="session")
def fake_checkpoints(tmp_path_factory):
    """Local stand-ins for what real configs point at: a diffusers-format Wan folder built from the
    tiny models (and one per other real model config, under ``model.path@<config name>``), an
    open_clip checkpoint file, a video folder."""
    root = tmp_path_factory.mktemp("ckpts")
    wan = root / "wan"
    tiny_wan().save_pretrained(wan / "transformer")
    tiny_wan_vae().vae.save_pretrained(wan / "vae")
    enc = tiny_text_encoder()
    enc.model.save_pretrained(wan / "text_encoder")
    enc.tokenizer.save_pretrained(wan / "tokenizer")
    per_model = {}
    for name, build in REAL_MODEL_FOLDERS.items():
        subfolder, backbone, vae, text = build()
        index = {"force_zeros_for_empty_prompt": True} if name == "sdxl" else None
        per_model[f"model.path@{name}"] = str(save_diffusers_folder(root / name, subfolder, backbone, vae, text, index))
    # a tiny open_clip architecture registered under a name, so the real loading path runs
    import open_clip
    (root / "arch").mkdir()
    (root / "arch" / "TurboTest-CLIP.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(root / "arch")
    clip = root / "clip.pt"
    torch.save(open_clip.create_model("TurboTest-CLIP").state_dict(), clip)
    videos = root / "videos"
    videos.mkdir()
    from turbo.video import write_video
    write_video(videos / "a.mp4", torch.rand(17, 3, 64, 64))
    (videos / "metadata.jsonl").write_text(json.dumps({"video": "a.mp4", "caption": "a red circle moving left"}) + "\n")
    # reward stand-ins: HPSv2 and the aesthetic CLIP reuse the tiny open_clip file; a Linear head; a PickScore folder
    torch.save(torch.nn.Linear(32, 1).state_dict(), root / "aesthetic_head.pt")
    from transformers import CLIPImageProcessor
    from rewards.pickscore import tiny_pickscore_reward
    pick = tiny_pickscore_reward()
    pick.model.clip.save_pretrained(root / "pickscore")
    pick.hf_tokenizer.save_pretrained(root / "pickscore")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "pickscore")
    # video rewards: the tiny models saved under ['model'] like the official files, a tiny BERT vocab
    from rewards.internvideo2 import TINY_VOCAB, tiny_internvideo2_model
    from rewards.viclip import tiny_viclip_model
    torch.save({"model": tiny_viclip_model().state_dict()}, root / "viclip.pth")
    torch.save({"model": tiny_internvideo2_model().state_dict()}, root / "internvideo2.pth")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(TINY_VOCAB))
    # ImageReward: the tiny model as a flat state dict like ImageReward.pt; the same tiny vocab (+ BLIP's 2 tokens)
    from rewards.image_reward_model import tiny_image_reward_model
    torch.save(tiny_image_reward_model().state_dict(), root / "ImageReward.pt")
    # data=cached: a turbo-cache of 4 toy clips for the default model (toy_t2v) and video size
    from hydra import compose, initialize_config_module
    from distill.cache import build_cache
    with initialize_config_module(config_module="conf", version_base="1.3"):
        build_cache(compose("cache", overrides=["data.size=4", f"cache.dir={root / 'cache'}", "device=cpu"]))
    return {"model.path": str(wan), "reward.clip.model.checkpoint": str(clip), "data.root": str(videos),
            "data.dir": str(root / "cache"),
            "reward.hpsv2.model.checkpoint": str(clip), "reward.aesthetic.model.clip_checkpoint": str(clip),
            "reward.aesthetic.model.head_checkpoint": str(root / "aesthetic_head.pt"),
            "reward.pickscore.model.path": str(root / "pickscore"),
            "reward.viclip.model.checkpoint": str(root / "viclip.pth"),
            "reward.internvideo2.model.checkpoint": str(root / "internvideo2.pth"),
            "reward.internvideo2.model.tokenizer_path": str(root / "bert"),
            "reward.image_reward.model.checkpoint": str(root / "ImageReward.pt"),
            "reward.image_reward.model.tokenizer_path": str(root / "bert"), **per_model}


def tiny_reward_overrides(cfg) -> list[str]:
    """Full-size reward towers are too big for a test: the same code with tiny architectures."""
    out = []
    for term in [k for k in cfg.reward if not k.startswith("_")]:
        model = cfg.reward[term].model
        if "arch" in model:
            out.append(f"reward.{term}.model.arch=TurboTest-CLIP")
        if "size" in model:
            out.append(f"reward.{term}.model.size=tiny")
    return out
