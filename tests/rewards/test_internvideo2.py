"""rewards.internvideo2: our InternVideo2-S2 against the official key layout, checkpoints, the score."""

import pytest
import torch
import torch.nn.functional as F

from rewards.base import RewardInputError, RewardModel
from rewards.internvideo2 import (
    bert_tokenize,
    InternVideo2,
    TINY_VOCAB,
    InternVideo2Config,
    internvideo2_reward,
    load_bert_tokenizer,
    resample_temporal_pos_embed,
    tiny_bert_tokenizer,
    tiny_internvideo2_model,
    tiny_internvideo2_reward,
    unused_checkpoint_keys,
)
from rewards.loading import CheckpointMismatchError, _ignored
from rewards.video_text import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames
from tests.rewards.key_layout import expected_layout, layout_of, meta_model


def random_video(b: int = 2, f: int = 4, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed))


def write_vocab(path):
    """A BERT vocab.txt (one token per line, line number = id) of the tiny vocabulary."""
    path.write_text("\n".join(TINY_VOCAB) + "\n")
    return path


def official_style_state(model: InternVideo2) -> dict[str, torch.Tensor]:
    """The model's weights plus the entries the official checkpoint holds beyond the score path."""
    cfg = model.config
    width, tokens = cfg.vision_width, 1 + cfg.num_frames * cfg.patches_per_frame
    extras = {
        "vision_encoder.img_pos_embed": torch.randn(1, 1 + cfg.patches_per_frame, width),
        "vision_encoder.clip_pos_embed": torch.randn(1, tokens, width),
        "vision_encoder.clip_img_pos_embed": torch.randn(1, 1 + cfg.patches_per_frame, width),
        "vision_encoder.clip_decoder.0.head.weight": torch.randn(40, width),
        "vision_encoder.final_clip_decoder.norm.bias": torch.randn(cfg.clip_embed_dim),
        "text_encoder.bert.embeddings.position_ids": torch.arange(cfg.text_positions)[None],
        f"text_encoder.bert.encoder.layer.{cfg.text_layers}.crossattention.self.key.weight": torch.randn(cfg.text_width, width),
        f"text_encoder.bert.encoder.layer.{cfg.text_layers + 1}.output.dense.bias": torch.randn(cfg.text_width),
        "text_encoder.cls.predictions.bias": torch.randn(cfg.vocab_size),
        "text_encoder.cls.predictions.decoder.weight": torch.randn(cfg.vocab_size, cfg.text_width),
        "itm_head.weight": torch.randn(2, cfg.text_width),
        "itm_head.bias": torch.randn(2),
        "temp": torch.tensor(0.07),
    }
    return {**{k: v.clone() for k, v in model.state_dict().items()}, **extras}


def test_full_size_layout_covers_the_official_checkpoint():
    # Reference layout: 1023 entries (vision 569, BERT-large MLM 447, projections, temp, itm_head).
    # Ours holds exactly the score path with the official names and shapes; the rest is skipped by name.
    official = expected_layout("internvideo2")
    config = InternVideo2Config.large()
    ours = layout_of(meta_model(lambda: InternVideo2(config)))
    skipped = {k for k in official if _ignored(k, unused_checkpoint_keys(config))}
    assert sorted(ours.keys() - official.keys()) == []
    assert sorted(official.keys() - ours.keys() - skipped) == []  # nothing the score needs is left out
    assert not skipped & ours.keys()
    assert {k: s for k, s in ours.items() if official[k] != s} == {}
    assert len(ours) == 851 and len(skipped) == 172
    n_params = sum(torch.Size(s).numel() for s in ours.values())
    assert 1.28e9 < n_params < 1.30e9  # ViT 1408 x 40 (1.01B) + 19 BERT-large layers (0.24B) + embeddings


@pytest.mark.parametrize("wrapper", ["model", "module"])  # train script / DeepSpeed layout
def test_official_style_checkpoint_loads_and_scores_identically(tmp_path, wrapper):
    source = tiny_internvideo2_reward(seed=5)
    path = tmp_path / "iv2.pt"
    torch.save({wrapper: official_style_state(source.model)}, path)
    video, prompts = random_video(), ["a red circle moving left", "a dog"]
    want = source(video, prompts)
    vocab = write_vocab(tmp_path / "vocab.txt")
    for loaded in (tiny_internvideo2_reward(checkpoint=str(path)), internvideo2_reward(str(path), str(vocab), size="tiny")):
        torch.testing.assert_close(loaded(video, prompts), want, atol=0, rtol=0)
    assert not torch.equal(tiny_internvideo2_reward(seed=0)(video, prompts), want)


def test_corrupted_checkpoint_raises_mismatch(tmp_path):
    state = official_style_state(tiny_internvideo2_model(seed=1))
    missing = {k: v for k, v in state.items() if k != "text_proj.bias"}
    renamed = dict(state)
    renamed["vision_encoder.blocks.0.attn.qkv.bias"] = renamed.pop("vision_encoder.blocks.0.attn.qkv.weight")
    reshaped = dict(state, **{"vision_proj.weight": torch.zeros(16, 32)})
    for bad, pattern in ((missing, "1 missing key.*text_proj.bias"), (renamed, "qkv"), (reshaped, "vision_proj.weight")):
        path = tmp_path / "bad.pt"
        torch.save({"model": bad}, path)
        with pytest.raises(CheckpointMismatchError, match=pattern) as err:
            tiny_internvideo2_reward(checkpoint=str(path), name="iv2")
        assert "reward.iv2.model.checkpoint" in str(err.value)


def test_temporal_resampling_is_linear_interpolation_in_time():
    # Closed form: a table equal to the frame index t (0..3) everywhere, resampled from 4 to 8 frames
    # with align_corners=False (source t = j / 2 - 1/4, clamped): the reference's f4 -> f8 step.
    n, c = 3, 2
    table = torch.cat([torch.full((1, 1, c), -7.0), torch.arange(4.0).repeat_interleave(n).view(1, 4 * n, 1).expand(1, 4 * n, c)], 1)
    out = resample_temporal_pos_embed(table, 8, n)
    want = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]).repeat_interleave(n)
    assert out.shape == (1, 1 + 8 * n, c) and out[0, 0].eq(-7).all()
    torch.testing.assert_close(out[0, 1:, 0], want, atol=1e-6, rtol=0)
    assert resample_temporal_pos_embed(table, 4, n) is table
    with pytest.raises(ValueError, match="multiple of 5"):
        resample_temporal_pos_embed(table, 8, 5)


def test_four_frame_checkpoint_scores_eight_frames(tmp_path):
    source = tiny_internvideo2_model(seed=4)
    path = tmp_path / "f4.pt"
    torch.save({"model": official_style_state(source)}, path)
    vocab = write_vocab(tmp_path / "vocab.txt")
    reward = internvideo2_reward(str(path), str(vocab), num_frames=8, checkpoint_frames=4, size="tiny")
    table = reward.model.vision_encoder.pos_embed
    torch.testing.assert_close(table, resample_temporal_pos_embed(source.vision_encoder.pos_embed, 8, 16), atol=0, rtol=0)
    assert reward.num_frames == 8 and reward.model.config.num_frames == 8 and not table.requires_grad
    assert reward(random_video(f=8), ["a", "b"]).isfinite().all()
    with pytest.raises(RewardInputError, match="exactly 8 frames"):
        reward(random_video(f=4), ["a", "b"])
    with pytest.raises(CheckpointMismatchError, match="pos_embed"):  # wrong checkpoint_frames: named, not garbled
        internvideo2_reward(str(path), str(vocab), num_frames=8, checkpoint_frames=8, size="tiny")


def test_score_is_cosine_of_projected_cls_features():
    reward = tiny_internvideo2_reward(seed=3)
    video, prompts = random_video(), ["a cat", "a dog"]
    m = reward.model
    with torch.no_grad():
        pixels = preprocess_frames(video.flatten(0, 1), 32, IMAGENET_MEAN, IMAGENET_STD).view(2, 4, 3, 32, 32)
        v = F.normalize(m.vision_proj(m.vision_encoder(pixels.transpose(1, 2))), dim=-1)
        tok = tiny_bert_tokenizer()(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        cls = m.text_encoder.bert(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state[:, 0]
        t = F.normalize(m.text_proj(cls), dim=-1)
    torch.testing.assert_close(reward(video, prompts), (v * t).sum(-1), atol=1e-6, rtol=0)


def test_locked_score_of_seeded_tiny_internvideo2():
    # Re-locked when preprocessing began rounding frames to uint8 as the reference does
    # (was [0.177649, 0.139377]).
    scores = tiny_internvideo2_reward(seed=0)(random_video(), ["a red ball", "a blue cube"])
    torch.testing.assert_close(scores, torch.tensor([0.177396, 0.139370]), atol=1e-4, rtol=0)


def test_text_features_ignore_padding():
    # Padded to max_length as the reference (40 for the 1B model); the mask must hide the padding.
    model = tiny_internvideo2_model(seed=0)
    prompts = ["a red circle moving left", "z"]
    feats = []
    for length in (12, 16):
        tokens = bert_tokenize(tiny_bert_tokenizer(), length, prompts)
        assert tokens["input_ids"].shape == (2, length) and tokens["attention_mask"][1].sum() == 3  # CLS z SEP
        feats.append(model.encode_text(tokens))
    torch.testing.assert_close(feats[0], feats[1], atol=1e-5, rtol=0)
    assert bert_tokenize(tiny_bert_tokenizer(), 40, ["word " * 60])["input_ids"].shape == (1, 40)


def test_tokenizer_loads_from_a_local_folder_or_vocab(tmp_path):
    # bert-large-uncased as downloaded: a folder with vocab.txt (and maybe tokenizer.json), or the file.
    want = tiny_bert_tokenizer()("A Red circle, moving LEFT")["input_ids"]
    (tmp_path / "vocab_only").mkdir()
    write_vocab(tmp_path / "vocab_only" / "vocab.txt")
    tiny_bert_tokenizer().save_pretrained(tmp_path / "saved")
    for source in (tmp_path / "vocab_only", tmp_path / "vocab_only" / "vocab.txt", tmp_path / "saved"):
        assert load_bert_tokenizer(source)("A Red circle, moving LEFT")["input_ids"] == want, source
    with pytest.raises(FileNotFoundError, match="nope.*reward.internvideo2.model.tokenizer_path"):
        load_bert_tokenizer(tmp_path / "nope")
    (tmp_path / "short.txt").write_text("\n".join(TINY_VOCAB[:50]) + "\n")
    torch.save({"model": tiny_internvideo2_model().state_dict()}, tmp_path / "iv2.pt")
    with pytest.raises(ValueError, match="has 50 tokens.*30522"):
        internvideo2_reward(str(tmp_path / "iv2.pt"), str(tmp_path / "short.txt"), size="tiny")


def test_gradient_reaches_every_frame_and_checkpointing_is_exact():
    video = random_video()
    results = []
    for flag in (False, True):
        reward = tiny_internvideo2_reward(seed=2, gradient_checkpointing=flag)
        x = video.clone().requires_grad_(True)
        score = reward(x, ["a", "b"])
        score.sum().backward()
        assert (x.grad.flatten(2).abs().amax(-1) > 0).all()
        assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
        results.append((score.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_exactly_the_configured_frames(frames):
    reward = tiny_internvideo2_reward(name="iv2")
    with pytest.raises(RewardInputError, match=rf"reward 'iv2': expected exactly 4 frames .* found {frames}"):
        reward(random_video(f=frames), ["a", "b"])


def test_protocol_frozen_eval_and_seeded():
    state = torch.random.get_rng_state()
    reward, again = tiny_internvideo2_reward(seed=0), tiny_internvideo2_reward(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(reward.state_dict().values(), again.state_dict().values()))
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert reward.kind == "video" and reward.name == "internvideo2" and isinstance(reward, RewardModel)
    with pytest.raises(ValueError, match="size must be one of"):
        internvideo2_reward("x.pt", "tok", size="6B")
