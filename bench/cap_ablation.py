"""Choose the default sink-image cap: the long-story ablation (``evaluation.evaluate.long_story_ablation``) of the
uncapped multimodal sink (the paper's rule) against capped ones, with paired bootstrap intervals.

    python -m bench.cap_ablation [--caps 2,4,8] [--stories 12] [--out-dir bench/out]
    # all four policies:
    python -m bench.cap_ablation --caps "" --policies dense,window,sink --csv-name long_story_ablation.csv

Held-out StoryStream-mini stories are visualized (ground-truth captions) for 3x the training length with the
bundled tiny model, free-running and teacher-forced; the judge is the evaluation's fixed judge
(``evaluation.judge.load_judge()``, ``evaluation/judge``; its sha256 is written into every row). Each story's mean
attribute agreement per segment (1x/2x/3x) is compared with the uncapped sink on the same story: the table gives
each policy's mean agreement with a 95% percentile bootstrap interval over stories, and the mean paired difference
with its interval (10,000 resamples, seed 0). Writes ``<csv-name>`` and a JSON of the same stem (per-story values)
into the output folder (never into tracked files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from bench.report import write_csv
from evaluation.evaluate import long_story_ablation
from evaluation.judge import load_judge
from evaluation.stories import DEFAULT_MODEL, TRAIN_LENGTH, load_model

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    "mode",
    "policy",
    "segment",
    "stories",
    "agreement",
    "agreement_ci_low",
    "agreement_ci_high",
    "diff_vs_uncapped",
    "ci_low",
    "ci_high",
    "ci_level",
    "pixel_l1",
    "seed",
    "judge_sha256",
    "window_images",
    "model_agent_sha256",
    "command",
)


def bootstrap_interval(diffs: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95):
    """(low, high) percentile bootstrap interval of the mean of ``diffs`` (paired per-story differences)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def table_rows(
    result: Dict,
    mode: str,
    baseline: str = "multimodal_sink",
    *,
    seed=None,
    judge_sha256=None,
    window_images=None,
    model_agent_sha256=None,
    command=None,
) -> List[dict]:
    """CSV rows from ``long_story_ablation(..., per_story_agreement=True)`` output."""
    rows = []
    for policy, segs in result.items():
        for seg, m in segs.items():
            per = m["attribute_agreement_per_story"]
            base = result[baseline][seg]["attribute_agreement_per_story"]
            diffs = [a - b for a, b in zip(per, base)]
            lo, hi = bootstrap_interval(diffs)
            a_lo, a_hi = bootstrap_interval(per)
            rows.append(
                dict(
                    mode=mode,
                    policy=policy,
                    segment=seg,
                    stories=len(per),
                    agreement=round(m["attribute_agreement"], 4),
                    agreement_ci_low=round(a_lo, 4),
                    agreement_ci_high=round(a_hi, 4),
                    diff_vs_uncapped=round(float(np.mean(diffs)), 4),
                    ci_low=round(lo, 4),
                    ci_high=round(hi, 4),
                    ci_level=0.95,
                    pixel_l1=round(m["pixel_l1"], 4),
                    seed=seed,
                    judge_sha256=judge_sha256,
                    window_images=window_images,
                    model_agent_sha256=model_agent_sha256,
                    command=command,
                )
            )
    return rows


def agent_sha256(model_dir=None) -> str:
    """sha256 of the agent weights of the bundle evaluated (which model a table row comes from)."""
    folder = Path(model_dir) if model_dir else DEFAULT_MODEL
    h = hashlib.sha256()
    for path in sorted((folder / "agent").glob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def command_line(args) -> str:
    """The command that reproduces a run (the output folder left out)."""
    parts = [
        "python -m bench.cap_ablation",
        f"--caps {args.caps or chr(39) * 2}",
        f"--stories {args.stories}",
        f"--seed {args.seed}",
        f"--modes {args.modes}",
    ]
    if getattr(args, "policies", ""):
        parts.append(f"--policies {args.policies}")
    if getattr(args, "window_images", None) is not None:
        parts.append(f"--window-images {args.window_images}")
    if getattr(args, "csv_name", "cap_ablation.csv") != "cap_ablation.csv":
        parts.append(f"--csv-name {args.csv_name}")
    if args.model:
        parts.append(f"--model {args.model}")
    return " ".join(parts)


def main(argv=None) -> int:
    """``python -m bench.cap_ablation``: the ablation of every policy and cap, written as CSV + JSON. Returns 0."""
    ap = argparse.ArgumentParser(prog="python -m bench.cap_ablation", description=__doc__.split("\n")[0])
    ap.add_argument("--caps", default="2,8", help="comma list of sink-image caps K")
    ap.add_argument(
        "--policies",
        default="",
        help="extra policies to compare with the uncapped sink, e.g. "
        "dense,window,sink (the paper's long-story ablation)",
    )
    ap.add_argument("--window-images", type=int, default=None, help="window W in images (default: the training length)")
    ap.add_argument("--csv-name", default="cap_ablation.csv", help="output file name (the JSON gets the same stem)")
    ap.add_argument("--stories", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--model", default=None, help="bundle folder (default: models/seedstory-tiny)")
    ap.add_argument("--modes", default="teacher_forced,free_running")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    window = TRAIN_LENGTH if args.window_images is None else args.window_images
    policies = ["multimodal_sink"] + [p.strip() for p in args.policies.split(",") if p.strip()]
    policies += [f"multimodal_sink:{int(k)}" for k in args.caps.split(",") if k.strip()]
    bundle, probe = load_model(args.model), load_judge()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    t0 = time.time()
    stem = Path(args.csv_name).stem
    partial = out / f"{stem}.partial.json"
    for mode in args.modes.split(","):
        result = {}
        for policy in policies:  # one policy at a time, saved as it completes (long runs on a shared CPU)
            extra = {} if args.window_images is None else {"window_images": args.window_images}
            result.update(
                long_story_ablation(
                    bundle=bundle,
                    judge=probe,
                    policies=(policy,),
                    stories=args.stories,
                    **extra,
                    seed=args.seed,
                    teacher_forced=(mode == "teacher_forced"),
                    per_story_agreement=True,
                )
            )
            raw[mode] = result
            partial.write_text(json.dumps(raw))
            print(f"{mode} {policy} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows += table_rows(
            result,
            mode,
            seed=args.seed,
            judge_sha256=getattr(probe, "sha256", None),
            window_images=window,
            model_agent_sha256=agent_sha256(args.model),
            command=command_line(args),
        )
    write_csv(out / args.csv_name, rows, COLUMNS)
    judge = getattr(probe, "sha256", None)
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "judge_sha256": judge, "result": raw}, indent=1))
    for r in rows:
        print(",".join(str(r[c]) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
