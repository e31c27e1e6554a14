"""Paired differences between two evaluations of the same held-out stories:
python evaluation/results/paired.py A:B [...]

For each pair ``A:B`` (JSON names in this folder, same seed and stories), the per-story difference A - B of every
per-story key, its mean and a 95% percentile bootstrap interval over stories
(:func:`evaluation.metrics.bootstrap_ci`, 2000 resamples, seed 0). Prints one JSON object."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
#: compared when both evaluations have them (the visualization halves are in evaluations made after they were added)
KEYS = (
    "score",
    "shown_rate",
    "coherence",
    "consistency",
    "visualization_agreement",
    "visualization_background",
    "visualization_cast",
)

if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    from evaluation.metrics import bootstrap_ci

    out = {}
    for pair in sys.argv[1:]:
        a_name, b_name = pair.split(":")
        a, b = (json.loads((HERE / f"{n}.json").read_text()) for n in (a_name, b_name))
        if (a["seed"], a["stories"]) != (b["seed"], b["stories"]):
            raise SystemExit(f"{pair}: different stories ({a['seed']}/{a['stories']} vs {b['seed']}/{b['stories']})")
        res = {}
        for k in (k for k in KEYS if k in a["per_story"] and k in b["per_story"]):
            d = [x - y for x, y in zip(a["per_story"][k], b["per_story"][k])]
            lo, hi = bootstrap_ci(d)
            res[k] = {"mean": round(sum(d) / len(d), 4), "ci95": [round(lo, 4), round(hi, 4)]}
        out[f"{a_name} - {b_name}"] = res
    print(json.dumps(out, indent=1))
