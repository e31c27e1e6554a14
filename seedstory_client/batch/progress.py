"""seedstory-batch output on the terminal: the progress bars (tqdm, optional) and the log lines.

tqdm is optional: without it there are no progress bars and log lines go straight to stderr; everything else runs
the same (``seedstory_client/deps.py``).
"""

from __future__ import annotations

import sys

try:  # optional: progress bars only (seedstory_client.deps.OPTIONAL)
    from tqdm import tqdm
except ImportError:
    tqdm = None

HAVE_TQDM = tqdm is not None


def progress_bar(total: int, desc: str, position: int = 0):
    """A tqdm bar on stderr over ``total`` units (None when tqdm is not installed). Its caller closes it."""
    if tqdm is None:
        return None
    return tqdm(
        total=total or None,
        desc=desc,
        unit="step",
        position=position,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def stderr_log(msg: str) -> None:
    """The default log: one line on stderr (through tqdm when it is there, so that the bars stay intact). Never
    raises: a closed terminal (SIGHUP) must not stop the batch from recording its jobs."""
    try:
        if tqdm is not None:
            tqdm.write(msg, file=sys.stderr)
            return
    except Exception:  # noqa: BLE001
        pass
    _print_err(msg)


def _print_err(msg: str) -> None:
    try:
        print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr gone (hang-up, closed pipe)
        pass
