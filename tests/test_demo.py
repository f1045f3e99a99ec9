"""A shortened demo (tiny sizes, one epoch per stage) runs both worlds end to end and fills
every row of each table."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_produces_the_full_table(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "tools/demo.py", "--quick", "--output_dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "motion" / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"linear (random backbone)", "linear probing", "VPT-deep", "APT (ours)",
                         "adapter", "LoRA", "end2end"}
    for r in rows.values():
        assert r["trainable_params"] > 0 and r["gflops"] > 0 and r["seconds"] > 0
        assert 0 <= r["top1"] <= r["top5"] <= 100
    # Structure of the comparison: VPT and APT train more than linear probing, and VPT's longer
    # token sequence costs more FLOPs than APT's key/value prompts.
    assert rows["APT (ours)"]["trainable_params"] > rows["linear probing"]["trainable_params"]
    assert rows["VPT-deep"]["gflops"] > rows["APT (ours)"]["gflops"] > rows["linear probing"]["gflops"]
    table = (out / "motion" / "results.md").read_text()
    assert table.count("\n| ") == 8 and "top-1" in table  # header + 7 rows
    # Every target of the comparison is checked and reported, met or not.
    assert sum(("target met" in n or "TARGET MISSED" in n) for n in results["notes"]) == 4
    assert "| APT (ours) |" in proc.stdout  # printed too
    assert (out / "motion" / "accuracy_vs_params.png").stat().st_size > 1000
    assert (out / "pretrain" / "checkpoint-last.pth").exists()
    assert (out / "knn_probe.png").stat().st_size > 1000
    probes = [json.loads(line) for line in (out / "pretrain" / "log.txt").read_text().splitlines()
              if "knn_top1" in line]
    assert [p["epoch"] for p in probes] == [-1, 0]  # before training, then after the epoch
    assert {p.name for p in (out / "tensorboard").iterdir()} == {"pretrain"}
    stages = {p.name for p in (out / "motion" / "tensorboard").iterdir()}
    assert {"apt", "linear_probing", "linear_random", "vpt-deep", "end2end"} <= stages

    # The pairs world: its own data (pairs classes), five rows, its four targets.
    rel = json.loads((out / "pairs" / "results.json").read_text())
    assert rel["config"]["world"] == "pairs"
    assert [r["method"] for r in rel["rows"]] == ["linear (random backbone)", "linear probing",
                                                  "VPT-deep", "APT (ours)", "end2end"]
    rel_notes = [n for n in rel["notes"] if "target met" in n or "TARGET MISSED" in n]
    assert len(rel_notes) == 4 and any("headroom" in n for n in rel_notes)
    assert any("recovers" in n for n in rel_notes)
    classes = (out / "pairs" / "data" / "classes.txt").read_text().split()
    assert classes == ["0", "move_same_way", "1", "move_opposite_ways", "2", "move_at_right_angles"]
    summary = (out / "results.md").read_text()
    assert "Synthetic motion classes" in summary and "Synthetic pairs of motions" in summary
