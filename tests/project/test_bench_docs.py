"""docs/benchmarks.md is generated from one run's CSV files in bench/results/ — and nothing else.

* the page equals what ``bench.docs.render`` makes of the tracked CSVs (so nobody edited it by hand, and a rerun of
  ``python -m bench --quick --update-docs`` rewrites both together);
* every number on the page occurs in a cell of those CSVs (as written, or rounded after a unit change: s→ms,
  bytes→MiB/GiB, FLOPs→GFLOPs, fraction→percent), so no hand-copied analysis can creep in;
* the statements issue 14 found stale are gone.
"""

import csv
import re
from pathlib import Path

import pytest

from bench import docs

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
PAGE = REPO / "docs" / "benchmarks.md"
NUMBER = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)(?![\w]|\.\d)")
SCALES = (1.0, 1e3, 1 / 2**20, 1 / 2**30, 1e-9, 100.0)
#: names of external references that contain digits but are not data
NOT_DATA = ("Table 8",)


def csv_numbers():
    values = set()
    for path in RESULTS.rglob("*.csv"):
        with open(path, newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    try:
                        values.add(float(cell))
                    except ValueError:
                        values.update(float(x) for x in NUMBER.findall(cell))
    return values


def matches(token: str, values) -> bool:
    decimals = len(token.split(".")[1]) if "." in token else 0
    target = float(token)
    tol = 0.5 * 10**-decimals + 1e-12
    return any(abs(v * s - target) <= tol for v in values for s in SCALES)


@pytest.fixture(scope="module")
def page():
    if not PAGE.is_file() or not any(RESULTS.glob("engine_*_run.csv")):
        pytest.fail(
            "docs/benchmarks.md or bench/results/engine_*_run.csv is missing: "
            "run `python -m bench --quick --update-docs`"
        )
    return PAGE.read_text()


def test_page_is_exactly_the_render_of_the_tracked_csvs(page):
    assert docs.render(RESULTS) == page, "docs/benchmarks.md differs from its CSVs: rerun `python -m bench.docs`"


def test_every_number_on_the_page_comes_from_a_csv(page):
    text = page
    for ref in NOT_DATA:
        text = text.replace(ref, "")
    values = csv_numbers()
    missing = sorted({t for t in NUMBER.findall(text) if not matches(t, values)}, key=float)
    assert not missing, f"numbers on docs/benchmarks.md that no CSV in bench/results holds: {missing[:20]}"


def test_number_check_can_fail():
    values = {0.1234, 2048.0}
    assert matches("0.123", values) and matches("123.4", values)  # as written / s -> ms
    assert not matches("0.125", values) and not matches("7", values)


def test_stale_statements_are_gone(page):
    assert "max(64" not in page and "89 MiB" not in page
    assert "also use the one-pass forward" not in page  # the re-encode baseline forces its image tokens
    assert "kv_bytes_multimodal_sink_over_dense_at_50:" not in page.split("## The five ratios")[1].split("##")[0]
    for key in (
        "decode_ms_per_token_over_plain_transformers",
        "step50_over_step5_default",
        "kv_bytes_default_over_dense_at_50",
        "reencode_over_multimodal_sink",
        "forced_over_onepass_image_queries",
    ):
        assert f"`{key}`" in page
    # the page says plainly what of the GPU command has run: nothing, or the measured section with what it missed
    assert "has NOT run" in page or ("## Full size on a GPU" in page and "Not measured on the GPU" in page)
