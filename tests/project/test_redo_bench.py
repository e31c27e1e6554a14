"""The redo benchmark (bench/redo_bench.py): a redo of frame 5 of a 12-frame story costs at most 0.6 of re-telling
the story (issue 27), printed as ``redo_over_rerun`` by ``python -m bench.redo_bench`` and ``python -m bench``."""

import csv
import re
import subprocess
import sys
from pathlib import Path

from bench import redo_bench

REPO = Path(__file__).resolve().parents[2]
RATIO_LINE = re.compile(r"^(redo_over_rerun|redo_continue_over_rerun): (\d+\.\d+)$")


def test_redo_of_frame_5_of_12_costs_at_most_0_6_of_a_rerun(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.redo_bench", "--reps", "1", "--out-dir", str(tmp_path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    lines = proc.stdout.strip().splitlines()
    assert [RATIO_LINE.match(ln).group(1) for ln in lines] == ["redo_over_rerun", "redo_continue_over_rerun"]
    ratio = float(RATIO_LINE.match(lines[0]).group(2))
    assert 0 < ratio <= redo_bench.TARGET
    with open(tmp_path / "redo.csv", newline="") as f:
        rows = {r["name"]: r["value"] for r in csv.DictReader(f)}
    assert rows["frames"] == "12" and rows["redo_frame"] == "5" and round(float(rows["redo_over_rerun"]), 4) == ratio
    assert float(rows["redo_s"]) < float(rows["rerun_s"])


def test_python_m_bench_runs_it_first_but_not_for_smoke_quality_or_memory_children(capsys):
    for argv in (["--smoke"], ["--model", "models/seedstory-tiny"], ["--memory-child", "{}"]):
        assert redo_bench.before_engine_bench(argv) == 0
    assert capsys.readouterr().out == ""
    assert "before_engine_bench" in (REPO / "bench" / "__main__.py").read_text()
