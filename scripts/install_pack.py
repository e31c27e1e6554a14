"""Copy this pack into a ComfyUI ``custom_nodes`` folder the way a user gets it (a plain copy, no symlink).

    python scripts/install_pack.py TARGET        # e.g. ComfyUI/custom_nodes/seedstory

The copying is :func:`seedstory_client.install.copy_pack` (what is copied, how an old copy is replaced); this
script is its command line (scripts/provision_comfyui.sh runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # seedstory_client, when run as `python scripts/install_pack.py`

from seedstory_client.install import copy_pack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Copy the pack to the one TARGET argument; prints the usage line and returns 2 without exactly one."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    dest = copy_pack(args[0])
    n = sum(1 for _ in dest.rglob("*") if _.is_file())
    print(f"[install_pack] copied the pack ({n} files) to {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
