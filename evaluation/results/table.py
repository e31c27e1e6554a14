"""Markdown rows from the evaluation JSONs in this folder: python evaluation/results/table.py [--keys K,...] NAME ...

Each NAME ([LABEL=]FILE) is a JSON written by ``python -m evaluation.evaluate`` (its last stdout line); a row gives
every key with its 95% bootstrap interval over stories (LABEL replaces the file name in the first column).
``--keys`` picks the columns (default :data:`KEYS`; e.g.
``visualization_agreement,visualization_background,visualization_cast``)."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
KEYS = (
    "score",
    "parse_rate",
    "distinct_sentence_rate",
    "continuity_rate",
    "shown_rate",
    "coherence",
    "consistency",
    "visualization_agreement",
)


def cell(r, k):
    """One table cell: key ``k`` of evaluation ``r`` with its interval ("—" when the evaluation lacks it)."""
    if k not in r:  # an older evaluation, made before the key existed
        return "—"
    v = r[k]
    lo, hi = r["score_ci95"] if k == "score" else r["ci95"][k]
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


if __name__ == "__main__":
    args, keys = sys.argv[1:], KEYS
    if args[:1] == ["--keys"]:
        keys, args = tuple(args[1].split(",")), args[2:]
    print("| seed | system | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for arg in args:
        label, _, name = arg.rpartition("=")
        r = json.loads((HERE / f"{name}.json").read_text())
        print(f"| {r['seed']} | {label or name} | " + " | ".join(cell(r, k) for k in keys) + " |")
