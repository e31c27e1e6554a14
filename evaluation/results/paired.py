"""Paired differences between two evaluations of the same held-out stories:
python evaluation/results/paired.py A:B [...]

For each pair ``A:B`` (JSON names in this folder, same seed and stories), the per-story difference A - B of every
per-story key, its mean and a 95% percentile bootstrap interval over stories
(:func:`evaluation.pooled.interval`: 2000 resamples, seed 0), and ``n``, the stories where both values exist (a
story without one, e.g. no look pair, is left out; a key with no such story is left out). Prints one JSON object."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))
from evaluation.pooled import interval  # noqa: E402  (run as a script from this folder)

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
    have (module docstring). Raises ValueError when the two are not the same seed and story count."""
    if (a["seed"], a["stories"]) != (b["seed"], b["stories"]):
        raise ValueError(f"different stories ({a['seed']}/{a['stories']} vs {b['seed']}/{b['stories']})")
    res = {}
    for k in (k for k in KEYS if k in a["per_story"] and k in b["per_story"]):
        d = [x - y for x, y in zip(a["per_story"][k], b["per_story"][k]) if x is not None and y is not None]
        if d:
            res[k] = interval(d)
    return res


if __name__ == "__main__":
    out = {}
    for pair in sys.argv[1:]:
        a_name, b_name = pair.split(":")
        a, b = (json.loads((HERE / f"{n}.json").read_text()) for n in (a_name, b_name))
        try:
            out[f"{a_name} - {b_name}"] = paired(a, b)
        except ValueError as e:
            raise SystemExit(f"{pair}: {e}") from None
    print(json.dumps(out, indent=1))
