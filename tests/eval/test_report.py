"""turbo-report: a sweep's finished runs -> one markdown table."""

import json

import pytest

from eval.report import collect, curves, main, pooled, pooled_table, table


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


def test_seeds_pool_into_mean_and_sd_per_arm_and_the_probe_is_plotted(tmp_path, capsys):
    for i, (arm, seed, total) in enumerate([("reward=toy", 0, 50.0), ("reward=toy", 1, 54.0), ("reward=toy", 2, 58.0),
                                            ("reward=none", 0, 40.0), ("reward=none", 1, 44.0)]):
        fake_run(tmp_path / "a" / str(i) if i < 3 else tmp_path / "b" / str(i), [f"seed={seed}", arm], total)
        probe = "".join(json.dumps({"step": s, "val/total": total + s}) + "\n" for s in (50, 100))
        with open(tmp_path / ("a" if i < 3 else "b") / str(i) / "metrics.jsonl", "a") as f:
            f.write(probe)
    rows = collect(tmp_path / "a", tmp_path / "b")  # two sweeps pooled into one table
    pooled_rows = {(r["arm"], r["sampler"].split(",")[0]): r for r in pooled(rows)}
    toy, none, teacher = (pooled_rows[("reward=toy", "student")], pooled_rows[("reward=none", "student")],
                          pooled_rows[("(every run)", "teacher")])
    assert (toy["n"], none["n"], teacher["n"]) == (3, 2, 5)
    assert toy["total"] == pytest.approx((54.0, 4.0)) and none["total"] == pytest.approx((42.0, 8 ** 0.5))
    assert teacher["total"] == (50.0, 0.0)  # the teacher does not depend on the training seed
    assert "| reward=toy | student, 4 steps | 3 | 60.0 ± 0.0 | 40.0 ± 0.0 | 54.0 ± 4.0 |" in pooled_table(rows)
    series = curves(rows)
    assert series["reward=toy"] == ([50, 100], [pytest.approx(104.0), pytest.approx(154.0)],
                                    [pytest.approx(4.0), pytest.approx(4.0)])
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "--plot", str(tmp_path / "p.png")])
    assert "± " in capsys.readouterr().out and (tmp_path / "p.png").stat().st_size > 1000
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--seeds", "--drop", "reward=none"])
    assert "| reward=none |" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="val/x"):
        main([str(tmp_path / "a"), "--seeds", "--plot", str(tmp_path / "q.png"), "--metric", "val/x"])


def test_steps_to_reach_a_fraction_of_each_runs_own_teacher(tmp_path):
    # two arms with different teachers (as an I2V and a T2V run have): each is measured against its own
    for i, (arm, seed, teacher, probe) in enumerate([("model=a", 0, 50.0, [30, 46, 50]), ("model=a", 1, 50.0, [45.5, 46, 47]),
                                                     ("model=b", 0, 80.0, [60, 70, 71])]):
        fake_run(tmp_path / str(i), [f"seed={seed}", arm], 55.0, teacher_total=teacher)
        with open(tmp_path / str(i) / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps({"step": 50 * (k + 1), "val/total": v}) + "\n" for k, v in enumerate(probe)))
    rows = collect(tmp_path)
    got = {(r["arm"], r["sampler"].split(",")[0]): r for r in pooled(rows, reach=0.9)}
    assert got[("model=a", "student")]["reach_steps"] == pytest.approx((75.0, 35.355), abs=1e-3)  # 100 and 50
    assert got[("model=b", "student")]["reached"] == 0  # 71 < 0.9 x 80
    assert got[("model=a", "teacher")]["n"] == 2 and got[("model=b", "teacher")]["total"] == (80.0, 0.0)
    text = pooled_table(rows, reach=0.9)
    assert "| 75 ± 35 (2 of 2) |" in text and "| not reached (0 of 1) |" in text
