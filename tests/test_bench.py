"""Smoke run of the story-engine benchmark (bench/engine_bench.py): tiny preset, 2 policies, frames 3 and 6."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import engine_bench as eb

REPO = Path(__file__).resolve().parents[1]
RATIO_LINE = re.compile(r"^[a-z0-9_]+: (-?\d+\.\d+|nan)$")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--smoke", "--policies", "dense,window,multimodal_sink,reencode_window", "--out-dir", str(out),
            "--docs", str(out / "benchmarks.md"), "--img-dir", str(out / "img")]
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_columns_and_equal_work(smoke):
    out, _ = smoke
    steps = read(out / "engine_smoke_tiny_steps.csv")
    assert tuple(steps[0].keys()) == eb.STEP_COLUMNS
    summary = read(out / "engine_smoke_tiny_summary.csv")
    assert tuple(summary[0].keys()) == eb.SUMMARY_COLUMNS
    assert {r["policy"] for r in steps} == {"dense", "window", "multimodal_sink", "reencode_window"}
    assert {int(r["frames"]) for r in summary} == {3, 6}
    # fixed sentence length: every step decodes exactly max_sentence_tokens text tokens
    assert {int(r["text_tokens"]) for r in steps} == {eb.MODES["smoke"]["sentence_tokens"]}
    for r in steps:
        parts = sum(float(r[k]) for k in ("prefill_s", "decode_s", "image_s", "other_s"))
        assert abs(parts - float(r["total_s"])) < 1e-4
        assert float(r["decode_s"]) > 0 and float(r["image_s"]) > 0
        if int(r["frame"]) >= 2:  # the previous image is stored by a context pass
            assert float(r["prefill_s"]) > 0


def test_kv_bytes_dense_grows_window_flat(smoke):
    out, _ = smoke
    steps = [r for r in read(out / "engine_smoke_tiny_steps.csv") if r["rep"] == "0"]
    dense = [int(r["kv_bytes"]) for r in steps if r["policy"] == "dense"]
    window = [int(r["kv_bytes"]) for r in steps if r["policy"] == "window"]
    assert all(b > a for a, b in zip(dense, dense[1:]))
    w = eb.MODES["smoke"]["window_images"]
    # window: evicting from the frame whose context holds > w images (start image + w frames) -> flat afterwards
    flat = window[w:]
    assert len(flat) >= 2 and len(set(flat)) == 1
    assert window[-1] < dense[-1]
    assert all(int(r["kv_bytes"]) == 0 and int(r["kv_bytes_work"]) > 0 for r in steps if r["policy"] == "reencode_window")


def test_ratio_lines_printed_last_in_order(smoke):
    out, stdout = smoke
    lines = stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[-4:]] == list(eb.RATIO_KEYS)
    for ln in lines:
        assert RATIO_LINE.match(ln), ln
    values = dict(ln.split(": ") for ln in lines)
    assert float(values["forced_over_onepass_image_queries"]) > 1
    assert float(values["kv_bytes_multimodal_sink_over_dense_at_50"]) < 1  # smoke: at the longest frame (6)
    assert (out / "benchmarks.md").read_text().count("Table 8") >= 1
    assert (out / "img" / "bench_time_per_step.png").stat().st_size > 0
    assert (out / "img" / "bench_kv_memory.png").stat().st_size > 0


def test_ratio_format_function():
    head = {k: 1.5 for k in eb.RATIO_KEYS}
    lines = eb.format_ratio_lines(head, [("step50_over_step5_dense", 1.25)])
    assert lines[-4:] == [f"{k}: 1.5000" for k in eb.RATIO_KEYS]
    assert lines[0] == "step50_over_step5_dense: 1.2500"


def test_quality_hook_writes_the_ablation_rows(tmp_path, monkeypatch):
    import training.evaluate as te

    calls = {}

    def fake_ablation(model_dir, **kw):
        calls.update(kw, model_dir=model_dir)
        return {p: {f"{m}x": {"attribute_agreement": 0.5 / m, "pixel_l1": 0.1 * m} for m in kw["length_multiples"]}
                for p in kw["policies"]}

    monkeypatch.setattr(te, "long_story_ablation", fake_ablation)
    cfg = eb.BenchConfig(out_dir=tmp_path)
    messages = []
    assert eb.quality_mode("some/model", cfg, log=messages.append) == 0
    assert calls["model_dir"] == "some/model" and "reencode_window" not in calls["policies"]
    rows = (tmp_path / "quality.csv").read_text().splitlines()
    assert rows[0] == "policy,length,attribute_agreement,pixel_l1"
    assert len(rows) == 1 + 3 * len(calls["policies"])
    assert any("multimodal_sink" in m and "3x" in m for m in messages)
