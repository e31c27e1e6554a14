"""The client's third-party packages, checked all at once before a batch starts.

``seedstory-batch`` needs ``requests`` and ``websocket-client`` (the HTTP API and the websocket) and ``Pillow`` (a
start image is checked and re-encoded before it is uploaded); ``tqdm`` only draws progress bars and is optional.
They are the dependencies of the client's own distribution (``seedstory_client/pyproject.toml``:
``pip install ./seedstory_client``), which pulls in no torch.

:func:`check_dependencies` is called when :mod:`seedstory_client.batch` is imported (by
:mod:`seedstory_client.batch.preflight`, its first import), so a missing package stops the command before any job is
read, uploaded or queued, with one message naming every missing package and the command that installs them.
This module imports nothing outside the standard library.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, List

# module -> the distribution that provides it (what `pip install` needs)
REQUIRED: Dict[str, str] = {"requests": "requests", "websocket": "websocket-client", "PIL": "Pillow"}
OPTIONAL: Dict[str, str] = {"tqdm": "tqdm"}  # progress bars only


class MissingDependency(ImportError):
    """A package the client needs cannot be imported. ``missing`` lists the distributions (e.g. ``["Pillow"]``)."""

    def __init__(self, message: str, missing: List[str]):
        super().__init__(message)
        self.missing = list(missing)


def missing_packages(modules: Dict[str, str] = REQUIRED) -> List[str]:
    """The distributions among ``modules`` ({module: distribution}) whose module cannot be imported here (not
    installed, or installed but broken), in the order given."""
    missing = []
    for module, dist in modules.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    return missing


def check_dependencies(what: str = "seedstory-batch") -> None:
    """Raise :class:`MissingDependency` naming every required package that cannot be imported (none: returns).

    The message names ``what`` (the command), the missing distributions and their modules, this Python, and the
    install command; it says that nothing was run. Source: docs/reliability.md, "The batch client".
    """
    missing = missing_packages(REQUIRED)
    if not missing:
        return
    modules = {d: m for m, d in REQUIRED.items()}
    names = ", ".join(f"{d} (module {modules[d]})" for d in missing)
    raise MissingDependency(
        f"{what} needs the Python package(s) {names}, which {sys.executable} cannot import; nothing was run. "
        f"Install the client: pip install ./seedstory_client (from the seedstory folder), or just the missing "
        f"package(s): {sys.executable} -m pip install {' '.join(missing)}",
        missing,
    )
