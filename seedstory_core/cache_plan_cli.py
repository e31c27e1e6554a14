"""Command line: ``python -m seedstory_core.cache_plan_cli plan FILE`` prints which story positions a cache policy
keeps.

FILE is JSON ``{"token_types": [...], "policy": "multimodal_sink", "window_images": W, "n_start": 4,
"boi_before": 4, "boi_after": 8, "eoi_before": 8, "eoi_after": 4}`` (optional ``max_sink_images``, and ``pinned``: the
story's pinned tokens at its start, BOS + a cast block, ``StoryState.cast_tokens``); labels as in
golden/sink_ranges_*.json (BOS, T*, BOI*, IMG*, EOI*). Prints ``{"kept": [...]}``: the sorted original positions
kept after the whole stream is processed, evicting after each image completes — computed by the same
:func:`seedstory_core.cache.plan_kept_positions` rule that :class:`~seedstory_core.cache.StoryKVCache` applies.
Use ``-`` for standard input. Exit status 2 with a message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cache import CachePolicy, plan_kept_positions
from .tokens import TokenKind


def plan_from_spec(spec: dict) -> list:
    """Kept positions for a planner JSON object (see module docstring). Raises ``ValueError`` on bad input."""
    if not isinstance(spec, dict) or "token_types" not in spec:
        raise ValueError('expected a JSON object with a "token_types" list')
    labels = spec["token_types"]
    if not isinstance(labels, list):
        raise ValueError(f'"token_types" must be a list of labels, found {type(labels).__name__}')
    kinds = [TokenKind.from_label(x) for x in labels]
    policy_fields = {k: v for k, v in spec.items() if k not in ("token_types", "pinned")}
    policy = CachePolicy.from_dict(policy_fields)
    pinned = spec.get("pinned", 0)
    if isinstance(pinned, bool) or not isinstance(pinned, int) or not 0 <= pinned <= len(kinds):
        raise ValueError(f'"pinned" must be an int in [0, {len(kinds)}] (tokens at the start), found {pinned!r}')
    return plan_kept_positions(kinds, policy, pinned=pinned)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seedstory_core.cache_plan_cli", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print the kept positions for a token stream and policy")
    plan.add_argument("file", help="planner JSON file, or - for stdin")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        kept = plan_from_spec(json.loads(text))
    except (OSError, ValueError, TypeError) as err:
        print(f"cache plan: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"kept": kept}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
