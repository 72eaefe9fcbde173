"""``turbo-cache``: encode a video dataset once, with the model's own VAE and text encoder, so that
``turbo-train data=cached`` trains without running either (and without loading the text encoder).

    turbo-cache model=wan2.1_t2v_1.3b data=videos data.root=/data/clips cache.dir=/data/cache/wan13b
    accelerate launch --num_processes 8 -m distill.cache ...     # shards split across processes
    turbo-train model=wan2.1_t2v_1.3b data=cached data.dir=/data/cache/wan13b ...

Layout of ``cache.dir``::

    manifest.json            what was encoded: model, video size, latent shape, shard size, items and
                             the bad videos skipped; written last, so a cache without it is unfinished
    uncond.safetensors       the empty prompt's conditioning (classifier-free guidance's other half)
    shard_00000.safetensors  items [0, S) of the dataset: ``latents`` N,C,F,h,w, the text
                             conditioning ``embeds`` N,L,D / ``mask`` N,L (/ ``pooled`` N,P), and for
                             an I2V model the pixels of each ``first_frame`` N,3,H,W; the prompts
                             and dataset indices in the file's metadata

Shard ``k`` holds the usable items among dataset indices ``[k S, (k + 1) S)``. Process ``r`` of
``w`` encodes the shards ``k = r mod w``; a shard already on disk is kept, so a killed cache run
resumes where it stopped. A bad video (unreadable, too short) is skipped and counted in the
manifest, as turbo-train does. Nothing here executes code on loading: safetensors and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from distill.data import BadItemError
from turbo.atomic import atomic_file, atomic_write_text
from distill.schema import CACHE
from turbo.config import ConfigError, build, check_config, report_errors
from turbo.text import TextCond

MANIFEST, UNCOND, VERSION = "manifest.json", "uncond.safetensors", 1
TEXT_KEYS = ("embeds", "mask", "pooled")


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def _save(path: Path, tensors: dict, metadata: dict) -> None:
    with atomic_file(path) as tmp:  # a shard is either whole or absent
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})


def _text_tensors(cond: TextCond) -> dict:
    return {k: getattr(cond, k) for k in TEXT_KEYS if getattr(cond, k) is not None}


@torch.no_grad()
def encode_shard(dataset: Dataset, indices: range, vae, text, i2v: bool, device) -> tuple[dict, dict]:
    """The tensors and metadata of one shard: every usable item of ``indices`` encoded."""
    prompts, kept, videos, skipped = [], [], [], {}
    for i in indices:
        try:
            item = dataset[i]
        except BadItemError as e:
            skipped[i] = str(e)
            continue
        prompts.append(item["prompt"])
        kept.append(i)
        videos.append(item["video"])
    if not kept:
        return {}, {"indices": [], "prompts": [], "skipped": skipped}
    video = torch.stack(videos).to(device)
    tensors = {"latents": vae.encode(video), **_text_tensors(text(prompts))}
    if i2v:
        tensors["first_frame"] = video[:, 0]
    return tensors, {"indices": kept, "prompts": prompts, "skipped": skipped}


def build_cache(cfg: DictConfig, accelerator: Accelerator | None = None) -> Path:
    """Encode ``cfg.data`` into ``cfg.cache.dir`` (see the module doc); returns the folder."""
    check_config(cfg, CACHE)
    accelerator = accelerator or Accelerator(cpu=cfg.device == "cpu")
    out, size = Path(cfg.cache.dir), int(cfg.cache.shard_size)
    if (out / MANIFEST).is_file() and not cfg.cache.overwrite:
        raise ConfigError(f"cache.dir={out} already holds a finished cache ({MANIFEST}); pass cache.overwrite=true "
                          f"to encode it again, or choose another cache.dir")
    out.mkdir(parents=True, exist_ok=True)
    device, m, v = accelerator.device, cfg.model, cfg.video
    text, vae = build(m.text_encoder, "model.text_encoder").to(device), build(m.vae, "model.vae").to(device)
    vae.check_video_size(v.num_frames, v.height, v.width, key="video")
    dataset = build(cfg.data, "data")
    if not getattr(dataset, "has_videos", False):
        raise ConfigError(f"data ({type(dataset).__name__}) gives prompts only: there is nothing to encode")
    shards = range((len(dataset) + size - 1) // size)
    for k in shards[accelerator.process_index::accelerator.num_processes]:
        if not (out / shard_name(k)).is_file():  # resume: a finished shard stays
            tensors, meta = encode_shard(dataset, range(k * size, min((k + 1) * size, len(dataset))), vae, text,
                                         m.get("i2v") is not None, device)
            _save(out / shard_name(k), tensors, meta)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save(out / UNCOND, _text_tensors(text([""])), {})
        per_shard = []
        for k in shards:
            with safe_open(str(out / shard_name(k)), "pt") as f:
                meta = {key: json.loads(value) for key, value in f.metadata().items()}
            per_shard.append({"file": shard_name(k), "items": len(meta["indices"]), "skipped": meta["skipped"]})
        manifest = {"version": VERSION, "model": m.name, "family": m.family, "i2v": m.get("i2v") is not None,
                    "video": OmegaConf.to_container(v, resolve=True),
                    "latent_shape": list(vae.latent_shape(v.num_frames, v.height, v.width)), "shard_size": size,
                    "dataset_size": len(dataset), "items": sum(s["items"] for s in per_shard),
                    "skipped": sum(len(s["skipped"]) for s in per_shard), "shards": per_shard}
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return out


class CachedDataset(Dataset):
    """The items of a ``turbo-cache`` folder: ``{"prompt", "latents", "text": {embeds, mask[, pooled]}
    [, "first_frame"]}``, in dataset order (skipped videos left out). ``uncond`` is the cached empty
    prompt's conditioning. Shards are opened memory-mapped and read one item at a time."""

    has_videos = True  # the latents of real videos: objectives that need real data train from them
    cached = True

    def __init__(self, dir: str, model: str | None = None, num_frames: int | None = None, height: int | None = None,
                 width: int | None = None) -> None:
        self.dir = Path(dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise ConfigError(f"data.dir={self.dir}: no {MANIFEST} (not a turbo-cache folder, or its cache run "
                              f"did not finish)")
        self.manifest = json.loads(path.read_text())
        want = {"model": model, "video.num_frames": num_frames, "video.height": height, "video.width": width}
        have = {"model": self.manifest["model"], **{f"video.{k}": x for k, x in self.manifest["video"].items()}}
        for key, value in want.items():
            if value is not None and have.get(key) != value:
                raise ConfigError(f"data.dir={self.dir} was encoded with {key}={have.get(key)}, this run has "
                                  f"{key}={value}: encode a cache for this setting (turbo-cache)")
        self.rows = [(s["file"], r) for s in self.manifest["shards"] for r in range(s["items"])]
        self._prompts: dict[str, list[str]] = {}
        with safe_open(str(self.dir / UNCOND), "pt") as f:
            self.uncond = TextCond(**{k: f.get_tensor(k) for k in f.keys()})

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, index: int) -> str:
        file, row = self.rows[index]
        return f"{file}[{row}]"

    def __getitem__(self, index: int) -> dict:
        file, row = self.rows[index]
        with safe_open(str(self.dir / file), "pt") as f:
            if file not in self._prompts:
                self._prompts[file] = json.loads(f.metadata()["prompts"])
            item = {"prompt": self._prompts[file][row], "latents": f.get_slice("latents")[row:row + 1][0],
                    "text": {k: f.get_slice(k)[row:row + 1][0] for k in TEXT_KEYS if k in f.keys()}}
            if "first_frame" in f.keys():
                item["first_frame"] = f.get_slice("first_frame")[row:row + 1][0]
        return item


@hydra.main(config_path="pkg://conf", config_name="cache", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.cache.dir is None:
        cfg.cache.dir = HydraConfig.get().runtime.output_dir
    out = report_errors("turbo-cache", lambda: build_cache(cfg))
    print(f"cache: {out}")


if __name__ == "__main__":
    main()
