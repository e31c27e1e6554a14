"""Template-browser thumbnails: workflows/<name>.jpg from the browser tests' screenshot docs/img/workflow_<name>.png.

    python scripts/make_thumbnails.py          # (re)write every thumbnail
    python scripts/make_thumbnails.py --check  # exit 1 when a UI workflow has no thumbnail

ComfyUI serves every file of the pack's workflows/ folder under /api/workflow_templates/<pack>/, and its frontend
shows <name>.jpg next to <name>.json in the template browser. tests/browser/test_browser.py refreshes the screenshots
(SEEDSTORY_UPDATE_DOCS_IMG=1) and then runs this script; tests/project/test_workflows.py checks one thumbnail per
workflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
DOCS_IMG = REPO_ROOT / "docs" / "img"
SIZE = (512, 384)  # 4:3, the template browser's card shape


def thumbnail(src: Path, dst: Path) -> None:
    img = Image.open(src).convert("RGB")
    scale = max(SIZE[0] / img.width, SIZE[1] / img.height)
    img = img.resize((max(SIZE[0], round(img.width * scale)), max(SIZE[1], round(img.height * scale))), Image.LANCZOS)
    left, top = (img.width - SIZE[0]) // 2, (img.height - SIZE[1]) // 2
    img.crop((left, top, left + SIZE[0], top + SIZE[1])).save(dst, quality=85, optimize=True)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    if "--check" in args:
        missing = [n for n in names if not (WORKFLOWS / f"{n}.jpg").is_file()]
        if missing:
            print(f"no thumbnail for {missing}: run python scripts/make_thumbnails.py", file=sys.stderr)
            return 1
        return 0
    for name in names:
        src = DOCS_IMG / f"workflow_{name}.png"
        if not src.is_file():
            print(f"no screenshot {src.relative_to(REPO_ROOT)} (run the browser tests)", file=sys.stderr)
            return 1
        thumbnail(src, WORKFLOWS / f"{name}.jpg")
    print(f"wrote {len(names)} thumbnails in workflows/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
