"""eval.loader_bench reads real mp4 batches through the DataLoader with and without workers."""

from eval.loader_bench import main


def test_the_loader_bench_reads_every_arm_and_prints_its_rate(tmp_path):
    out = tmp_path / "loader.md"
    text = main(["--videos", "4", "--source-frames", "5", "--source-size", "32", "--frames", "3", "--size", "16",
                 "--batch-size", "2", "--steps", "2", "--repeats", "1", "--workers", "0", "1", "--out", str(out)])
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert [r[1].strip() for r in rows] == ["0", "1"]
    assert all(float(r[2]) > 0 for r in rows) and rows[0][3].strip() == "1.00x"
    assert out.read_text().strip() == text.strip()
