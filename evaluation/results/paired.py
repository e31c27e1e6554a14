"""Paired differences between two evaluations of the same held-out stories:
python evaluation/results/paired.py A:B [...]

For each pair ``A:B`` (JSON names in this folder, same seed and stories), the per-story difference A - B of every
per-story key, its mean and a 95% percentile bootstrap interval over stories
(:func:`evaluation.metrics.bootstrap_ci`, 2000 resamples, seed 0), and ``n``, the stories where both values exist (a
story without one, e.g. no look pair, is left out; a key with no such story is left out). Prints one JSON object."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))
from evaluation.metrics import bootstrap_ci  # noqa: E402  (run as a script from this folder)

#: compared when both evaluations have them (the visualization halves are in evaluations made after they were added)
KEYS = (
    "score",
    "parse_rate",
    "shown_rate",
    "shown_place_rate",
    "shown_cast_rate",
    "shown_look_rate",
    "shown_action_object_rate",
    "coherence",
    "consistency",
    "look_consistency",
    "look_accuracy",
    "visualization_agreement",
    "visualization_background",
    "visualization_cast",
)


def paired(a: dict, b: dict) -> dict:
    """``{key: {"mean", "ci95", "n"}}``: per-story differences a - b of every key of :data:`KEYS` both evaluations
    have (module docstring). Raises SystemExit when the two are not the same seed and story count."""
    if (a["seed"], a["stories"]) != (b["seed"], b["stories"]):
        raise SystemExit(f"different stories ({a['seed']}/{a['stories']} vs {b['seed']}/{b['stories']})")
    res = {}
    for k in (k for k in KEYS if k in a["per_story"] and k in b["per_story"]):
        d = [x - y for x, y in zip(a["per_story"][k], b["per_story"][k]) if x is not None and y is not None]
        if not d:
            continue
        lo, hi = bootstrap_ci(d)
        res[k] = {"mean": round(sum(d) / len(d), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(d)}
    return res


if __name__ == "__main__":
    out = {}
    for pair in sys.argv[1:]:
        a_name, b_name = pair.split(":")
        a, b = (json.loads((HERE / f"{n}.json").read_text()) for n in (a_name, b_name))
        try:
            out[f"{a_name} - {b_name}"] = paired(a, b)
        except SystemExit as e:
            raise SystemExit(f"{pair}: {e}") from None
    print(json.dumps(out, indent=1))
