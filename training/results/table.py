"""Markdown rows from the evaluation JSONs in this folder: python training/results/table.py NAME [NAME ...].

Each NAME is a JSON written by ``python -m training.evaluate`` (its last stdout line); a row gives every key with
its 95% bootstrap interval over stories."""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
KEYS = ("score", "parse_rate", "distinct_sentence_rate", "continuity_rate", "shown_rate", "coherence", "consistency",
        "visualization_agreement")


def cell(r, k):
    v = r[k]
    lo, hi = r["score_ci95"] if k == "score" else r["ci95"][k]
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


if __name__ == "__main__":
    print("| file | seed | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for name in sys.argv[1:]:
        r = json.loads((HERE / f"{name}.json").read_text())
        print(f"| {name} | {r['seed']} | " + " | ".join(cell(r, k) for k in KEYS) + " |")
