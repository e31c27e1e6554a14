"""Pool the cast protocol's seeds and compare its systems: python -m evaluation.pooled --dir DIR --seeds S1,S2
[--markdown] [--out FILE]

Reads ``DIR/<system>_<seed>.json`` (written by ``python -m evaluation.cast_eval``) for every system of
:data:`evaluation.cast_eval.SYSTEMS` that has a file for every seed, and

* pools the per-story values of all seeds per (system, segment, metric): mean and 95% bootstrap interval over the
  pooled stories (:func:`evaluation.metrics.bootstrap_ci`, 2000 resamples, seed 0; a story whose value is None,
  e.g. no look pair in the segment, is left out and ``n`` says how many count);
* prints the PAIRED differences A - B over the same stories (matched by story id; both values not None) with a 95%
  bootstrap interval, for :data:`PAIRS`;
* checks the done-criteria of "characters who stay themselves" (:func:`criteria`) and prints one
  ``PASS``/``FAIL``/``SKIP`` line each;
* with ``--markdown``, a table of every system x segment (for docs/evaluation.md) and the retry's cost;
* with ``--against DIR2`` (the same protocol's files of another bundle, e.g. the previous release), the paired
  differences this bundle - that one for every system both have, on :data:`VERSUS_METRICS` (:func:`versus`).

``--out FILE`` also writes everything as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from evaluation.cast_eval import METRICS, SEGMENTS, SYSTEMS, output_path
from evaluation.metrics import bootstrap_ci

#: (A, B, metric, segments): the paired differences A - B reported
PAIRS: Tuple[Tuple[str, str, str, Tuple[str, ...]], ...] = (
    ("model", "static_start", "score", ("1x", "3x")),
    ("model", "copy_first", "score", ("1x", "3x")),
    ("model_cast", "model", "look_consistency", ("1x", "3x")),
    ("model_cast", "model", "look_accuracy", ("1x", "3x")),
    ("model_cast", "model", "look_self_consistency", ("1x", "3x")),
    ("model_cast", "copy_first", "shown_cast_rate", ("1x",)),
    ("model_cast", "copy_first", "visualization_cast", ("1x",)),
    ("model", "copy_first", "visualization_cast", ("1x",)),
    ("ground_truth_detok", "copy_first", "visualization_cast", ("1x",)),
    ("model_cast", "model", "visualization_look_accuracy", ("1x", "3x")),
    ("model_cast", "copy_first", "score", ("1x",)),
    ("model_retry", "model", "look_consistency", ("1x", "3x")),
    ("model_retry", "model", "score", ("1x", "3x")),
    ("model_cast_retry", "model_cast", "look_consistency", ("1x", "3x")),
    ("model_cast_retry", "model_cast", "score", ("1x", "3x")),
)
#: the markdown table's columns: (metric, header)
COLUMNS = (
    ("score", "score"),
    ("parse_rate", "parse"),
    ("distinct_sentence_rate", "distinct"),
    ("continuity_rate", "continuous"),
    ("shown_rate", "shown"),
    ("shown_place_rate", "place"),
    ("shown_cast_rate", "cast"),
    ("shown_look_rate", "look"),
    ("shown_action_object_rate", "action+object"),
    ("look_consistency", "look consistency"),
    ("look_accuracy", "look accuracy"),
    ("look_self_consistency", "look vs first"),
    ("visualization_cast", "vis. cast"),
    ("visualization_look_accuracy", "vis. look"),
)
#: the metrics ``--against`` compares, per segment
VERSUS_METRICS = (
    "score",
    "parse_rate",
    "continuity_rate",
    "shown_place_rate",
    "shown_cast_rate",
    "shown_look_rate",
    "shown_action_object_rate",
    "look_consistency",
    "look_accuracy",
    "look_self_consistency",
    "visualization_cast",
    "visualization_look_accuracy",
)
PARSE_MIN = 0.9
DISTINCT_OF_GROUND_TRUTH = 0.85
#: the model's systems the parse and distinct criteria apply to
CRITERIA_SYSTEMS = ("model", "model_cast")


def load(directory, seeds: Sequence[int], systems: Sequence[str] = SYSTEMS) -> Dict[str, List[Dict]]:
    """{system: [its result per seed]} for every system with a file for every seed (others are left out)."""
    out = {}
    for s in systems:
        paths = [output_path(directory, s, seed) for seed in seeds]
        if all(p.is_file() for p in paths):
            out[s] = [json.loads(p.read_text()) for p in paths]
    return out


def story_values(results: Sequence[Dict], segment: str, metric: str) -> Dict[str, Optional[float]]:
    """{story id: per-story value} of ``metric`` in ``segment`` over all seeds' results."""
    out: Dict[str, Optional[float]] = {}
    for r in results:
        seg = r["segments"].get(segment) or {}
        values = (seg.get("per_story") or {}).get(metric) or [None] * len(r["story_ids"])
        out.update(zip(r["story_ids"], values))
    return out


def interval(values: Sequence[float]) -> Dict:
    """Mean, 95% bootstrap interval (seed 0) and count of ``values`` (None fields when empty)."""
    v = [float(x) for x in values]
    if not v:
        return {"mean": None, "ci95": None, "n": 0}
    lo, hi = bootstrap_ci(v)
    return {"mean": round(float(np.mean(v)), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(v)}


def paired_segments(mine: Dict[str, Dict[str, Dict]], theirs: Dict[str, Dict[str, Dict]]) -> Dict[str, Dict[str, Dict]]:
    """``mine - theirs`` per segment and key, paired by story: ``{segment: {key: interval}}``.

    Args:
        mine, theirs: ``{segment: {key: {"per_story": [value or None, ...]}}}`` of the same seed, story ``k`` at index
            ``k`` (``theirs`` may hold more stories: the first ``len(mine's)`` are paired); stories without a value
            in either are left out.
    """
    out: Dict[str, Dict[str, Dict]] = {}
    for seg, per_key in mine.items():
        out[seg] = {}
        for key, vals in per_key.items():
            pairs = zip(vals["per_story"], theirs[seg][key]["per_story"])
            out[seg][key] = interval([a - b for a, b in pairs if a is not None and b is not None])
    return out


def pooled(data: Dict[str, List[Dict]]) -> Dict[str, Dict[str, Dict[str, Dict]]]:
    """{system: {segment: {metric: interval of the pooled per-story values}}}."""
    return {
        s: {
            seg: {m: interval([v for v in story_values(rs, seg, m).values() if v is not None]) for m in METRICS}
            for seg in SEGMENTS
        }
        for s, rs in data.items()
    }


def paired(data: Dict[str, List[Dict]], a: str, b: str, segment: str, metric: str) -> Optional[Dict]:
    """A - B of ``metric`` in ``segment`` over the stories both have a value for: mean, 95% interval, n; None when
    a system is missing."""
    if a not in data or b not in data:
        return None
    va, vb = story_values(data[a], segment, metric), story_values(data[b], segment, metric)
    common = [k for k in va if k in vb and va[k] is not None and vb[k] is not None]
    return interval([va[k] - vb[k] for k in common])


def versus(
    data: Dict[str, List[Dict]], other: Dict[str, List[Dict]], metrics: Sequence[str] = VERSUS_METRICS
) -> Dict[str, Dict]:
    """This bundle's results minus another bundle's, per system both have, paired by story id (both values not
    None), keyed ``"system: metric @ segment"`` (segments 1x and 3x; a metric without paired stories is left
    out)."""
    out = {}
    for system in (s for s in SYSTEMS if s in data and s in other):
        for seg in ("1x", "3x"):
            for metric in metrics:
                va, vb = story_values(data[system], seg, metric), story_values(other[system], seg, metric)
                common = [k for k in va if k in vb and va[k] is not None and vb[k] is not None]
                if common:
                    out[f"{system}: {metric} @ {seg}"] = interval([va[k] - vb[k] for k in common])
    return out


def all_pairs(data: Dict[str, List[Dict]]) -> Dict[str, Dict]:
    """Every difference of :data:`PAIRS` whose systems are present, keyed ``"A - B: metric @ segment"``."""
    out = {}
    for a, b, metric, segs in PAIRS:
        for seg in segs:
            d = paired(data, a, b, seg, metric)
            if d is not None:
                out[f"{a} - {b}: {metric} @ {seg}"] = d
    return out


def _above(x: Optional[Dict], y: Optional[Dict]) -> Optional[bool]:
    if not x or not y or x.get("ci95") is None or y.get("ci95") is None:
        return None
    return x["ci95"][0] > y["ci95"][1]


def _positive(d: Optional[Dict]) -> Optional[bool]:
    if not d or d.get("ci95") is None:
        return None
    return d["ci95"][0] > 0


def criteria(data: Dict[str, List[Dict]], pool=None) -> List[Tuple[str, Optional[bool], str]]:
    """The done-criteria, each (name, True/False/None = cannot be checked, detail):

    * the model's score interval lies above static_start's and copy_first's (1x and 3x);
    * look consistency with the cast sheet > without at 3x (paired interval of model_cast - model above 0);
    * the cast half of model_cast > copy_first's at 1x (paired interval above 0), checked twice: with
      ``shown_cast_rate`` (generation mode, as the protocol was briefed; copy_first's is 1 whenever the judge reads its
      start frame right, since its sentence is always the opening one, so this one cannot pass) and with
      ``visualization_cast`` (the cast half of docs/evaluation.md: the true sentences drawn, the cast read vs the true
      frame's);
    * parse rate >= :data:`PARSE_MIN` and distinct-sentence rate >= :data:`DISTINCT_OF_GROUND_TRUTH` x the ground
      truth's (same segment) for :data:`CRITERIA_SYSTEMS`, 1x and 3x.
    """
    pool = pool if pool is not None else pooled(data)

    def get(system, seg, metric):
        return (pool.get(system) or {}).get(seg, {}).get(metric)

    out = []
    for other in ("static_start", "copy_first"):
        for seg in ("1x", "3x"):
            x, y = get("model", seg, "score"), get(other, seg, "score")
            out.append((f"model score above {other} @ {seg}", _above(x, y), f"{x and x['ci95']} vs {y and y['ci95']}"))
    d = paired(data, "model_cast", "model", "3x", "look_consistency")
    out.append(("look consistency with cast > without @ 3x", _positive(d), f"paired {d and d['ci95']}"))
    d = paired(data, "model_cast", "model", "3x", "look_self_consistency")
    label = "(same reference) look vs first appearance with cast > without @ 3x"
    out.append((label, _positive(d), f"paired {d and d['ci95']}"))
    for metric in ("shown_cast_rate", "visualization_cast"):
        d = paired(data, "model_cast", "copy_first", "1x", metric)
        out.append((f"cast half ({metric}) of model_cast > copy_first @ 1x", _positive(d), f"paired {d and d['ci95']}"))
    for s in CRITERIA_SYSTEMS:
        for seg in ("1x", "3x"):
            p = get(s, seg, "parse_rate")
            ok = None if not p or p["mean"] is None else p["mean"] >= PARSE_MIN
            out.append((f"{s} parse >= {PARSE_MIN} @ {seg}", ok, f"{p and p['mean']}"))
            x, g = get(s, seg, "distinct_sentence_rate"), get("ground_truth", seg, "distinct_sentence_rate")
            ok = (
                None
                if not x or not g or None in (x["mean"], g["mean"])
                else (x["mean"] >= DISTINCT_OF_GROUND_TRUTH * g["mean"])
            )
            out.append(
                (
                    f"{s} distinct >= {DISTINCT_OF_GROUND_TRUTH} x ground truth @ {seg}",
                    ok,
                    f"{x and x['mean']} vs {DISTINCT_OF_GROUND_TRUTH} x {g and g['mean']}",
                )
            )
    return out


def _cell(v: Optional[Dict]) -> str:
    if not v or v.get("mean") is None:
        return "—"
    lo, hi = v["ci95"]
    return f"{v['mean']:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown(data: Dict[str, List[Dict]], pool=None, seeds: Sequence[int] = ()) -> str:
    """The markdown tables: every system x segment with every metric (mean [95% interval]), then the retry's cost
    and the wall time per story."""
    pool = pool if pool is not None else pooled(data)
    lines = ["| system | segment | stories | " + " | ".join(h for _, h in COLUMNS) + " |"]
    lines.append("|---|---|---|" + "---|" * len(COLUMNS))
    for s in (s for s in SYSTEMS if s in data):
        for seg in SEGMENTS:
            row = pool[s][seg]
            lines.append(
                f"| {s} | {seg} | {row['score']['n']} | " + " | ".join(_cell(row[m]) for m, _ in COLUMNS) + " |"
            )
    lines += [
        "",
        "| system | frames redrawn / drawn | redraws | retry seconds | generation s per story | s per story |",
        "|---|---|---|---|---|---|",
    ]
    for s in (s for s in SYSTEMS if s in data):
        secs = [x for r in data[s] for x in r.get("seconds_per_story", [])]
        gen = [x for r in data[s] for x in r.get("generation_seconds_per_story", [])]
        per_story = (f"{np.mean(gen):.2f}" if gen else "—") + " | " + (f"{np.mean(secs):.2f}" if secs else "—")
        retry = [r["retry"] for r in data[s] if r.get("retry")]
        if retry:
            frames = sum(r["frames"] for r in retry)
            redrawn = sum(r["frames_redrawn"] for r in retry)
            lines.append(
                f"| {s} | {redrawn} / {frames} | {sum(r['redraws'] for r in retry)} | "
                f"{sum(r['seconds'] for r in retry):.1f} | {per_story} |"
            )
        else:
            lines.append(f"| {s} | — | — | — | {per_story} |")
    if seeds:
        lines.insert(0, f"Seeds {', '.join(map(str, seeds))}; mean [95% bootstrap interval over the pooled stories].\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m evaluation.pooled``: print the paired differences, the criteria (and the markdown table)."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.pooled", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("evaluation/results/cast"))
    parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 2000,3000")
    parser.add_argument("--markdown", action="store_true", help="also print the markdown tables")
    parser.add_argument("--out", type=Path, default=None, help="write everything as one JSON object")
    parser.add_argument(
        "--against", type=Path, default=None, help="another bundle's results: paired differences this - that"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data = load(args.dir, seeds)
    if not data:
        print(f"no system has a result for every seed {seeds} in {args.dir}", file=sys.stderr)
        return 1
    pool = pooled(data)
    pairs = all_pairs(data)
    checks = criteria(data, pool)
    if args.markdown:
        print(markdown(data, pool, seeds))
        print()
    print(f"systems: {', '.join(data)}; seeds: {', '.join(map(str, seeds))}")
    for name, d in pairs.items():
        ci = d["ci95"]
        print(f"{name}: {d['mean']} [{ci[0]}, {ci[1]}] (n={d['n']})" if ci else f"{name}: no paired stories")
    for name, ok, detail in checks:
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}: {name} ({detail})")
    against = versus(data, load(args.against, seeds)) if args.against is not None else None
    if against is not None:
        print(f"this bundle - {args.against} (paired by story):")
        for name, d in against.items():
            print(f"  {name}: {d['mean']} [{d['ci95'][0]}, {d['ci95'][1]}] (n={d['n']})")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "seeds": seeds,
                    "systems": list(data),
                    "pooled": pool,
                    "paired": pairs,
                    "criteria": [{"name": n, "pass": ok, "detail": d} for n, ok, d in checks],
                    **({"against": {"dir": str(args.against), "paired": against}} if against is not None else {}),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
