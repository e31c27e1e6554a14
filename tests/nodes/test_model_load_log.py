"""Each real model load logs one line (a cache hit logs nothing), so a server log tells how often models loaded."""

import logging
import sys

from tests.support.pack_loader import PACK, load_pack

load_pack()
models = sys.modules[f"{PACK}.nodes.models"]


def test_a_real_load_logs_once_and_a_cache_hit_logs_nothing(caplog):
    models.clear_cache()
    calls = []
    with caplog.at_level(logging.INFO):
        for key in ("a", "a", "b"):
            models.cached_load("test_kind", key, lambda k=key: calls.append(k) or k)
    lines = [r.getMessage() for r in caplog.records if "[SeedStory] loaded test_kind" in r.getMessage()]
    assert calls == ["a", "b"] and len(lines) == 2, (calls, lines)
    models.clear_cache()
