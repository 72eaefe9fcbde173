"""turbo-report on turbo-eval results: the table, the bars per dimension, a metric against a setting."""

import json

import pytest
import yaml
from PIL import Image

from eval.report import main


def evaluation(root, name, overrides, total, lora=None, suite="vbench"):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "suite=vbench"]))
    (folder / "results.json").write_text(json.dumps({
        "suite": suite, "num_videos": 10, "lora": lora, "partial": True,
        "dimensions": {"subject_consistency": 0.9 * total, "temporal_flickering": total},
        "aggregate": {"Quality": total, "Semantic": None, "Total": None,
                      "normalized": {"subject_consistency": 0.8 * total, "temporal_flickering": 0.7 * total}},
        "builtin": {"clip_score": 20.0}}))
    return folder


def test_the_table_bars_and_a_sweep_plot(tmp_path, capsys):
    evaluation(tmp_path, "0", [], 0.9)
    evaluation(tmp_path, "1", ["lora=runs/cd/student"], 0.8, lora="runs/cd/student")
    evaluation(tmp_path, "2", ["lora=runs/dmd2/student"], 0.7, lora="runs/dmd2/student")
    out = tmp_path / "report.md"
    main([str(tmp_path), "--out", str(out), "--by", "lora", "--metric", "Quality", "--plot", str(tmp_path / "q.png")])
    text = out.read_text()
    assert "| teacher (partial) | 0.8100 | 0.9000 | 20.0000 | **0.9000** |" in text
    assert "| lora=runs/dmd2/student (partial) |" in text and "— |" not in text.split("\n")[4]
    assert capsys.readouterr().out.strip() == text.strip()
    for png in (tmp_path / "report_bars.png", tmp_path / "q.png"):
        assert Image.open(png).size[0] > 100
    with pytest.raises(SystemExit, match="--metric Totl: .* has no such score"):
        main([str(tmp_path), "--by", "lora", "--metric", "Totl", "--plot", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="--by seed: no evaluation sets seed="):
        main([str(tmp_path), "--by", "seed", "--plot", str(tmp_path / "x.png")])


def test_mixed_suites_are_refused(tmp_path):
    evaluation(tmp_path, "a", [], 0.9)
    evaluation(tmp_path, "b", ["x=1"], 0.9, suite="evalcrafter")
    with pytest.raises(SystemExit, match=r"mix suites \['evalcrafter', 'vbench'\]"):
        main([str(tmp_path)])
