"""Copy this pack into a ComfyUI ``custom_nodes`` folder the way a user gets it (a plain copy, no symlink).

Command: ``python scripts/install_pack.py TARGET`` (e.g. ``ComfyUI/custom_nodes/seedstory``).

The pack is the checkout this package lies in (:data:`REPO_ROOT`, the folder above ``seedstory_client/``). What is
copied: in a git work tree the files git tracks plus untracked files that are not ignored
(``git ls-files -co --exclude-standard``: what a clone by ComfyUI-Manager would hold, plus your uncommitted
work); elsewhere every file except the folders in :data:`EXCLUDE_DIRS`. The copy is built next to TARGET and
then swapped in, so a server that imports from TARGET never sees a half-written pack. An existing TARGET (an
older copy, or a symlink made by older versions of scripts/provision_comfyui.sh) is replaced. Nothing is
pip-installed: the pack's Python requirements come from its ``requirements.txt``.

Library use: ``copy_pack(target) -> Path`` (:func:`seedstory_client.launcher.start` copies the pack into each test
server's own ``custom_nodes``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: The checkout holding this package: the pack that :func:`copy_pack` copies.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Never copied (environments, caches, outputs, provisioned ComfyUIs, the browser tests' node_modules).
EXCLUDE_DIRS = {
    ".git",
    ".venv",
    ".comfyui",
    ".cache",
    "output",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    "build",
    "dist",
    "runs",
    ".whl",
}


def pack_files(root: Path = REPO_ROOT) -> list[str]:
    """Relative paths (``/``-separated) of the files that make up the pack."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        files = [f for f in out.decode("utf-8", "surrogateescape").split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in EXCLUDE_DIRS and not d.endswith(".egg-info")]
            rel = Path(dirpath).relative_to(root)
            files += [(rel / f).as_posix() for f in filenames]
    keep = []
    for f in files:
        parts = f.split("/")
        if any(p in EXCLUDE_DIRS or p.endswith(".egg-info") for p in parts[:-1]) or f.endswith((".pyc", ".pyo")):
            continue
        if (root / f).is_file():  # deleted-but-tracked files are skipped
            keep.append(f)
    return sorted(keep)


def copy_pack(target: str | os.PathLike, root: Path = REPO_ROOT) -> Path:
    """Copy the pack at ``root`` to ``target`` (replaced as a whole). Returns ``target`` as a Path.

    Raises:
        ValueError: ``target`` is ``root`` itself or lies inside it.
        OSError: a file could not be copied.
    """
    target = Path(os.path.abspath(target))
    real_root = root.resolve()
    where = target.parent.resolve() / target.name  # a symlink at target is replaced, not followed
    # inside the repository only under a folder that is never copied (e.g. .comfyui/ComfyUI-0.30.0/custom_nodes)
    if where == real_root or (real_root in where.parents and where.relative_to(real_root).parts[0] not in EXCLUDE_DIRS):
        raise ValueError(f"refusing to copy the pack into itself: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new.", dir=target.parent))
    try:
        for rel in pack_files(root):
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dst)
        old = None
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, old / "pack")
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
