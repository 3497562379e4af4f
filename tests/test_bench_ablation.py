"""bench/ablation.py --quick (the CI mode) runs end to end and writes its table, plot and JSON."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ablation_quick_mode_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "ablation.py"), "--quick", "--variants", "a,b,c,d,e",
         "--json", str(tmp_path / "a.jsonl"), "--markdown", str(tmp_path / "t.md"),
         "--plot", str(tmp_path / "p.png")],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
    assert [r["variant"] for r in rows] == ["a", "b", "c", "d", "e"]
    for row in rows:
        assert 0.0 <= row["AR100"] <= 1.0 and row["quick"] is True
    assert (tmp_path / "t.md").read_text().count("\n") == 7
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_ablation_quick_mode_faster_rcnn_table3(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "ablation.py"), "--quick", "--head", "faster_rcnn",
         "--variants", "a,d,e", "--json", str(tmp_path / "f.jsonl"), "--markdown", str(tmp_path / "t.md")],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "f.jsonl")]
    assert [(r["bench"], r["variant"]) for r in rows] == [("ablation_faster_rcnn", v) for v in "ade"]
    for row in rows:
        assert 0.0 <= row["AP"] <= 1.0 and 0.0 <= row["AP50"] <= 1.0 and row["final_loss"] > 0
    table = (tmp_path / "t.md").read_text()
    assert "| AP | AP50 | AP_s |" in table and table.count("\n") == 5
