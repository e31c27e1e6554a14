"""Smoke run of the story-engine benchmark (python -m bench: bench/engine_bench.py runs bench/config.py,
bench/measure.py and bench/report.py): tiny preset, 5 policies, frames 3 and 6."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import config, docs, full_size, report, story_step
from bench import engine_bench as eb
from bench.cap_ablation import table_rows
from evaluation import evaluate as evaluation

REPO = Path(__file__).resolve().parents[2]
RATIO_LINE = re.compile(r"^[a-z0-9_]+: (-?\d+\.\d+|nan)$")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = [
        "--smoke",
        "--policies",
        "dense,window,multimodal_sink,default,reencode_window",
        "--out-dir",
        str(out),
        "--docs",
        str(out / "benchmarks.md"),
        "--img-dir",
        str(out / "img"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=str(REPO), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_columns_and_equal_work(smoke):
    out, _ = smoke
    steps = read(out / "engine_smoke_tiny_steps.csv")
    assert tuple(steps[0].keys()) == report.STEP_COLUMNS
    summary = read(out / "engine_smoke_tiny_summary.csv")
    assert tuple(summary[0].keys()) == report.SUMMARY_COLUMNS
    assert {r["policy"] for r in steps} == {"dense", "window", "multimodal_sink", "default", "reencode_window"}
    assert {int(r["frames"]) for r in summary} == {3, 6}
    # fixed sentence length: every step decodes exactly max_sentence_tokens text tokens
    assert {int(r["text_tokens"]) for r in steps} == {config.BENCH_CONFIG_BY_MODE["smoke"]["sentence_tokens"]}
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
    w = config.BENCH_CONFIG_BY_MODE["smoke"]["window_images"]
    # window: evicting from the frame whose context holds > w images (start image + w frames) -> flat afterwards
    flat = window[w:]
    assert len(flat) >= 2 and len(set(flat)) == 1
    assert window[-1] < dense[-1]
    assert all(
        int(r["kv_bytes"]) == 0 and int(r["kv_bytes_work"]) > 0 for r in steps if r["policy"] == "reencode_window"
    )


def test_ratio_lines_printed_last_in_order(smoke):
    out, stdout = smoke
    lines = stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[-5:]] == list(report.RATIO_KEYS)
    for ln in lines:
        assert RATIO_LINE.match(ln), ln
    values = dict(ln.split(": ") for ln in lines)
    assert float(values["forced_over_onepass_image_queries"]) > 1
    assert float(values["kv_bytes_default_over_dense_at_50"]) < 1  # smoke: at the longest frame (6)
    assert 0 < float(values["decode_ms_per_token_over_plain_transformers"]) < 10
    assert float(values["reencode_over_multimodal_sink"]) > 1
    assert (out / "benchmarks.md").read_text().count("Table 8") >= 1
    assert (out / "img" / "bench_time_per_step.png").stat().st_size > 0
    assert (out / "img" / "bench_kv_memory.png").stat().st_size > 0


def test_ratio_format_function():
    head = {k: 1.5 for k in report.RATIO_KEYS}
    lines = report.format_ratio_lines(head, [("step50_over_step5_dense", 1.25)])
    assert lines[-5:] == [f"{k}: 1.5000" for k in report.RATIO_KEYS]
    assert report.RATIO_KEYS[0] == "decode_ms_per_token_over_plain_transformers"
    assert lines[0] == "step50_over_step5_dense: 1.2500"


def test_quality_hook_writes_the_ablation_rows(tmp_path, monkeypatch):
    calls = {}

    def fake_ablation(model_dir, **kw):
        calls.update(kw, model_dir=model_dir)
        return {
            p: {f"{m}x": {"attribute_agreement": 0.5 / m, "pixel_l1": 0.1 * m} for m in kw["length_multiples"]}
            for p in kw["policies"]
        }

    monkeypatch.setattr(evaluation, "long_story_ablation", fake_ablation)
    cfg = config.BenchConfig(out_dir=tmp_path)
    messages = []
    assert eb.quality_mode("some/model", cfg, log=messages.append) == 0
    assert calls["model_dir"] == "some/model" and "reencode_window" not in calls["policies"]
    rows = (tmp_path / "quality.csv").read_text().splitlines()
    assert rows[0] == "policy,length,attribute_agreement,pixel_l1"
    assert len(rows) == 1 + 3 * len(calls["policies"])
    assert any("multimodal_sink" in m and "3x" in m for m in messages)


def test_default_run_writes_no_tracked_file_and_update_docs_does():
    cfg = config.config_from_args(config.parse_args(["--quick"]))
    tracked = {config.TRACKED_RESULTS, config.TRACKED_DOCS, config.TRACKED_IMG}
    assert (
        cfg.out_dir == config.DEFAULT_OUT
        and cfg.docs_path.parent == config.DEFAULT_OUT
        and cfg.img_dir.parent == config.DEFAULT_OUT
    )
    assert not tracked & {cfg.out_dir, cfg.docs_path, cfg.img_dir}
    assert "out/" in (REPO / "bench" / ".gitignore").read_text().split()
    cfg = config.config_from_args(config.parse_args(["--quick", "--update-docs"]))
    assert (cfg.out_dir, cfg.docs_path, cfg.img_dir) == (
        config.TRACKED_RESULTS,
        config.TRACKED_DOCS,
        config.TRACKED_IMG,
    )


def test_smoke_docs_render_from_the_run_folder(smoke):
    out, _ = smoke
    page = (out / "benchmarks.md").read_text()
    assert page == docs.render(out, img_rel="img")
    assert (out / "full_size.csv").is_file() and (out / "paper_table8.csv").is_file()


def test_full_size_analytic_counts():
    rows = {
        r["policy"]: r
        for r in full_size.full_size_rows(frame=50, sentence_tokens=24, window_images=8, default_max_sink_images=8)
    }
    per_token = 2 * 32 * 32 * 128 * 2  # K+V, 32 layers, 32 KV heads, 128 dims, bf16
    assert rows["dense"]["kv_tokens"] == 1 + 24 + 66 + 50 * 24 + 49 * 66  # start + 50 sentences + 49 stored images
    assert rows["dense"]["kv_bytes"] == rows["dense"]["kv_tokens"] * per_token
    assert rows["window"]["kv_tokens"] == rows["sink"]["kv_tokens"] - 4
    # the paper's sink keeps 24 tokens per evicted image; the default cap keeps those of at most 8 images
    evicted = 49 + 1 - 8
    # (minus 3: EOI+1..EOI+3 of the newest evicted image are already in the window)
    assert rows["multimodal_sink"]["kv_tokens"] - rows["sink"]["kv_tokens"] == 24 * evicted - 3
    assert rows["default"]["kv_tokens"] - rows["sink"]["kv_tokens"] == 24 * 8 - 3
    assert rows["default"]["kv_bytes"] / rows["dense"]["kv_bytes"] <= 0.3
    assert (
        rows["dense"]["attn_flops"]
        > rows["multimodal_sink"]["attn_flops"]
        > rows["default"]["attn_flops"]
        > rows["window"]["attn_flops"]
    )
    assert (
        rows["reencode_window"]["reencode_tokens"] > 0
        and rows["reencode_window"]["attn_flops"] > rows["window"]["attn_flops"]
    )
    assert rows["multimodal_sink"]["paper_minus_dense_gb"] == round(31.82 - 37.99, 2)


def test_full_size_command_runs_on_cpu_with_one_layer(tmp_path):
    """The documented GPU command (--preset full --random-weights) runs end to end on the CPU with one layer."""
    args = [
        "--smoke",
        "--preset",
        "full",
        "--random-weights",
        "--layers",
        "1",
        "--policies",
        "default",
        "--lengths",
        "1,2",
        "--sentence-tokens",
        "2",
        "--skip-extras",
        "--out-dir",
        str(tmp_path),
        "--docs",
        "",
        "--img-dir",
        "",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=str(REPO), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read(tmp_path / "engine_smoke_full_summary.csv")
    assert {r["policy"] for r in rows} == {"default"} and {int(r["frames"]) for r in rows} == {1, 2}
    assert all(int(r["kv_bytes"]) > 0 for r in rows)
    assert "preset=full" in proc.stderr and proc.stdout.strip().splitlines()[-5].startswith(
        "decode_ms_per_token_over_plain_transformers: "
    )


def test_story_step_runs_and_splits_mllm_and_detokenizer(tmp_path):
    """bench.story_step end to end at a toy step count: every loop row, MLLM + de-tokenizer = total, CSV written."""
    assert (
        story_step.main(
            [
                "--models",
                "bundled",
                "--frames",
                "2",
                "--window-images",
                "1",
                "--official-steps",
                "2",
                "--fast-steps",
                "1",
                "--sentence-tokens",
                "3",
                "--skip-quality",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = read(tmp_path / "story_step.csv")
    assert [(r["loop"], r["scheduler"]) for r in rows] == [
        ("official", "euler"),
        ("ours", "euler"),
        ("ours", "dpmpp_2m"),
    ]
    for r in rows:
        assert abs(float(r["mllm_s"]) + float(r["detok_s"]) - float(r["total_s"])) < 1e-4
        assert 0 < float(r["mllm_share"]) < 1


def test_long_story_ablation_table_pairs_each_story_with_the_uncapped_sink():
    """bench.cap_ablation.table_rows: per-policy means with intervals, and paired differences against the uncapped
    multimodal sink story by story (a policy better on every story by 0.1 has its whole interval above 0)."""
    base = [0.2, 0.5, 0.4, 0.9, 0.3, 0.6]
    better = [b + 0.1 for b in base]
    result = {
        p: {"1x": {"attribute_agreement": sum(v) / len(v), "pixel_l1": 0.1, "attribute_agreement_per_story": v}}
        for p, v in (("multimodal_sink", base), ("window", better))
    }
    rows = {r["policy"]: r for r in table_rows(result, "teacher_forced", seed=7, judge_sha256="abc")}
    assert rows["multimodal_sink"]["diff_vs_uncapped"] == 0.0
    w = rows["window"]
    assert (
        w["diff_vs_uncapped"] == pytest.approx(0.1)
        and w["ci_low"] == pytest.approx(0.1)
        and w["ci_high"] == pytest.approx(0.1)
    )
    assert w["agreement_ci_low"] < w["agreement"] < w["agreement_ci_high"]
    assert (w["seed"], w["judge_sha256"], w["stories"]) == (7, "abc", 6)
