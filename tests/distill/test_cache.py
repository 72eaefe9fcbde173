"""turbo-cache: a dataset encoded once; data=cached trains from it with the same losses."""

import json
import os

import pytest
import torch
from hydra import compose, initialize_config_module

from distill.cache import MANIFEST, CachedDataset, build_cache, shard_name
from distill.train import run_training, setup
from tests.distill.test_hardening import video_folder  # noqa: F401 (a fixture)
from tests.distill.test_train import cfg_for, metrics
from turbo.config import ConfigError


def cache_cfg(out, *overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("cache", overrides=["model=tiny_wan", "device=cpu", "cache.shard_size=4",
                                           f"cache.dir={out}", *overrides])


class Process:
    """accelerate's Accelerator as build_cache sees it, for process ``index`` of ``count``."""

    def __init__(self, index: int, count: int):
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        pass


def test_a_cached_run_trains_with_the_uncached_runs_losses_and_no_text_encoder(tmp_path):
    build_cache(cache_cfg(tmp_path / "cache", "data.size=6"))
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert (manifest["items"], manifest["skipped"], len(manifest["shards"])) == (6, 0, 2)
    common = ["train.steps=3", "train.batch_size=2"]
    run_training(cfg_for("data.size=6", *common), tmp_path / "plain")
    cached = cfg_for("data=cached", f"data.dir={tmp_path / 'cache'}", *common)
    run_training(cached, tmp_path / "cached")
    plain, from_cache = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    for key in ("student/loss", "cd", "score/clip"):
        assert [r[key] for r in from_cache] == pytest.approx([r[key] for r in plain], rel=1e-5, abs=1e-7)
    assert (tmp_path / "cached" / "DONE").is_file()  # the end of the run built the text encoder it needed
    run = setup(cfg_for("data=cached", f"data.dir={tmp_path / 'cache'}"), tmp_path / "probe")
    assert run.text is None  # training never loads it
    run.out.unlock()


def test_processes_split_the_shards_and_a_killed_cache_resumes(tmp_path):
    cfg = cache_cfg(tmp_path, "data.size=10", "cache.shard_size=3")  # shards 0..3
    build_cache(cfg, Process(1, 2))
    assert sorted(p.name for p in tmp_path.glob("shard_*")) == [shard_name(1), shard_name(3)]
    assert not (tmp_path / MANIFEST).exists()  # only the main process writes it
    build_cache(cfg, Process(0, 2))
    assert json.loads((tmp_path / MANIFEST).read_text())["items"] == 10
    mask = os.umask(0)
    os.umask(mask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in tmp_path.glob("*.safetensors"))  # shareable
    kept = (tmp_path / shard_name(0)).stat().st_mtime_ns
    (tmp_path / MANIFEST).unlink()
    (tmp_path / shard_name(2)).unlink()  # a run killed before this shard and the manifest
    build_cache(cfg, Process(0, 1))
    assert (tmp_path / shard_name(0)).stat().st_mtime_ns == kept and (tmp_path / shard_name(2)).is_file()
    items = [CachedDataset(str(tmp_path))[i]["prompt"] for i in range(10)]
    from distill.data import ToyVideoDataset

    toy = ToyVideoDataset(10, 9, 32, 32)
    assert items == [toy[i]["prompt"] for i in range(10)]  # dataset order
    with pytest.raises(ConfigError, match="already holds a finished cache.*cache.overwrite=true"):
        build_cache(cfg, Process(0, 1))


def test_bad_videos_are_skipped_and_counted(tmp_path, video_folder):  # noqa: F811
    build_cache(cache_cfg(tmp_path / "c", "data=videos", f"data.root={video_folder}", "cache.shard_size=5"))
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert (manifest["items"], manifest["skipped"]) == (8, 4)
    assert len(CachedDataset(str(tmp_path / "c"))) == 8


def test_a_cache_of_another_setting_is_refused_naming_the_key(tmp_path):
    build_cache(cache_cfg(tmp_path, "data.size=2"))
    with pytest.raises(ConfigError, match=r"encoded with video.height=32, this run has video.height=64"):
        CachedDataset(str(tmp_path), model="tiny_wan", num_frames=9, height=64, width=32)
    with pytest.raises(ConfigError, match="encoded with model=tiny_wan, this run has model=toy_t2v"):
        CachedDataset(str(tmp_path), model="toy_t2v")
    with pytest.raises(ConfigError, match=f"data.dir={tmp_path / 'none'}: no {MANIFEST}"):
        CachedDataset(str(tmp_path / "none"))
