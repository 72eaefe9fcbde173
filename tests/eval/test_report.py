"""turbo-report: a sweep's finished runs -> one markdown table."""

import json

import pytest

from eval.report import collect, main, table


def fake_run(folder, overrides, student_total, teacher_total=50.0):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "sec": 3.0}) + "\n" for i in range(10)))
    row = {"quality": 60.0, "semantic": 40.0, "colour": 90.0, "shape": 40.0, "motion": 20.0, "count": 10.0,
           "sec_per_video": 0.5}
    done = {"steps": 10, "eval": {"teacher, 50 steps, CFG 3.0": {**row, "total": teacher_total},
                                  "student, 4 steps": {**row, "total": student_total, "sec_per_video": 0.05}}}
    (folder / "DONE").write_text(json.dumps(done))


def test_report_tables_a_sweep(tmp_path, capsys):
    fake_run(tmp_path / "0", ["objective=toy_cd", "reward=toy", "train.steps=10"], 55.0)
    fake_run(tmp_path / "1", ["objective=toy_dmd2", "reward=toy", "train.steps=10"], 45.0)
    (tmp_path / "2").mkdir()  # an unfinished run is skipped
    rows = collect(tmp_path)
    assert [(r["run"], r["sampler"].split(",")[0]) for r in rows] == [
        ("objective=toy_cd", "teacher"), ("objective=toy_cd", "student"),
        ("objective=toy_dmd2", "teacher"), ("objective=toy_dmd2", "student")]
    assert rows[1]["train_minutes"] == pytest.approx(0.5)
    text = table(rows)
    assert text.count("| (every run) | teacher") == 1  # the same teacher is listed once
    assert "| objective=toy_cd | student, 4 steps | 60.0 | 40.0 | 55.0 |" in text
    main([str(tmp_path), "--out", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text().strip() == text == capsys.readouterr().out.strip()
    with pytest.raises(FileNotFoundError, match="no finished run"):
        collect(tmp_path / "2")
