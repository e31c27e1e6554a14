"""Generate the node reference from the SeedStory nodes themselves (INPUT_TYPES, RETURN_*, OUTPUT_TOOLTIPS,
DESCRIPTION, CATEGORY, SEARCH_ALIASES), without ComfyUI: docs/nodes.md (all nodes, for readers of the repository)
and web/docs/<NodeId>.md (one page per node, the same text: ComfyUI's frontend shows it in its node help panel,
served from the pack's WEB_DIRECTORY).

    python scripts/gen_node_docs.py            # rewrite docs/nodes.md and web/docs/*.md
    python scripts/gen_node_docs.py --check    # exit 1 when any of them is stale (or a stray page exists)
    python scripts/gen_node_docs.py --stdout   # print docs/nodes.md

The pack imports ComfyUI lazily, so the node classes import in a plain venv. Combos that ComfyUI fills from model
folders (``folder_paths``) are empty here; they are documented by the folder their tooltip names.
tests/project/test_docs.py regenerates the page in memory and fails when the committed one differs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "docs" / "nodes.md"
WEB_DOCS = REPO_ROOT / "web" / "docs"
PACK = "seedstory_pack_for_docs"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def load_pack():
    """Import the pack folder as a package (its __init__ and nodes never import ComfyUI at module level)."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))  # seedstory_core, for a checkout without `pip install -e .`
    spec = importlib.util.spec_from_file_location(
        PACK, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)
    return mod


#: ComfyUI modules hidden while the page is rendered, so that it never depends on what is importable (inside
#: ComfyUI, or a test that put stand-ins into sys.modules, combos would list that machine's model files).
COMFY_MODULES = ("folder_paths", "comfy", "comfy.model_management", "comfy.samplers", "comfy.utils", "server")


@contextlib.contextmanager
def without_comfyui():
    saved = {name: sys.modules.get(name, _MISSING) for name in COMFY_MODULES}
    try:
        for name in COMFY_MODULES:
            sys.modules[name] = None  # `import name` now raises ImportError
        yield
    finally:
        for name, mod in saved.items():
            if mod is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


_MISSING = object()


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(value) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, int) and value >= 2**31 - 1 and value == 2 ** value.bit_length() - 1:
        return f"`2^{value.bit_length()}-1`"  # 2147483647 -> 2^31-1
    return f"`{value}`"


def _type(kind, opts) -> str:
    if isinstance(kind, (list, tuple)):
        if not kind:
            return "combo (files found by ComfyUI)"
        shown = ", ".join(f"`{c}`" for c in kind[:8])
        more = f", … ({len(kind)} choices)" if len(kind) > 8 else ""
        return f"combo: {shown}{more}"
    text = f"`{kind}`"
    if kind == "STRING" and opts.get("multiline"):
        text += " (multi-line)"
    if opts.get("forceInput") or kind not in WIDGET_TYPES:
        text += " socket"
    return text


def _default(kind, opts) -> str:
    if "default" in opts:
        return _code(opts["default"])
    if isinstance(kind, (list, tuple)):
        return _code(kind[0]) if kind else "first file"
    return "—"


def _range(kind, opts) -> str:
    if kind not in ("INT", "FLOAT"):
        return ""
    parts = []
    if "min" in opts or "max" in opts:
        lo = _code(opts["min"]).strip("`") if "min" in opts else "-inf"
        hi = _code(opts["max"]).strip("`") if "max" in opts else "inf"
        parts.append(f"{lo} … {hi}")
    if "step" in opts:
        parts.append(f"step {opts['step']}")
    if opts.get("control_after_generate"):
        parts.append("control after generate")
    return ", ".join(parts)


def _anchor(node_id: str) -> str:
    return node_id.lower()


def render() -> str:
    """docs/nodes.md."""
    return render_all()[OUT]


def render_all() -> dict:
    """{path: text} for docs/nodes.md and every web/docs/<NodeId>.md."""
    with without_comfyui():
        return _render_all()


def _node_section(node_id: str, cls, display: str, heading: str) -> list:
    """The reference of one node (heading level ``heading``, e.g. "###"), shared by both outputs."""
    out = [f"{heading} {display}", ""]
    flags = [f"id `{node_id}`", f"category `{cls.CATEGORY}`"]
    if getattr(cls, "OUTPUT_NODE", False):
        flags.append("output node")
    out += [" · ".join(flags), "", _cell(cls.DESCRIPTION), ""]
    aliases = getattr(cls, "SEARCH_ALIASES", None)
    if aliases:
        out += ["Also found in the node search as: " + ", ".join(f"*{a}*" for a in aliases) + ".", ""]
    spec = cls.INPUT_TYPES()
    rows = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            label = f"`{name}`" + (" (optional)" if section == "optional" else "")
            rows.append(
                f"| {label} | {_type(kind, opts)} | {_default(kind, opts)} | {_range(kind, opts)} | "
                f"{_cell(opts.get('tooltip', ''))} |"
            )
    if rows:
        out += [
            "**Inputs**",
            "",
            "| input | type | default | range | description |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    if cls.RETURN_TYPES:
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or [""] * len(cls.RETURN_TYPES)
        rnames = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        out += ["**Outputs**", "", "| output | type | description |", "|---|---|---|"]
        for rname, rtype, tip in zip(rnames, cls.RETURN_TYPES, tips):
            out.append(f"| `{rname}` | `{rtype}` | {_cell(tip)} |")
        out.append("")
    return out


def _render_all() -> dict:
    pack = load_pack()
    classes = pack.NODE_CLASS_MAPPINGS
    names = pack.NODE_DISPLAY_NAME_MAPPINGS
    by_cat: dict[str, list[str]] = {}
    for node_id, cls in classes.items():
        by_cat.setdefault(cls.CATEGORY, []).append(node_id)

    out = [
        "# SeedStory nodes",
        "",
        "<!-- Generated by scripts/gen_node_docs.py from the nodes' INPUT_TYPES, RETURN_TYPES, OUTPUT_TOOLTIPS, "
        "DESCRIPTION and CATEGORY. Do not edit by hand: run `python scripts/gen_node_docs.py`. -->",
        "",
        f"{len(classes)} nodes in ComfyUI's node library under **SEED-Story** (double-click the canvas and type "
        '"SeedStory"). Every input and output also has this text as its tooltip in ComfyUI, and each node\'s '
        "section is also its page in ComfyUI's node help panel (web/docs/).",
        "",
        "Model-file combos are filled by ComfyUI from the folders named in their tooltips "
        "(see [models.md](models.md)); "
        'they are listed as "combo (files found by ComfyUI)" here. Sockets take a link from another node; '
        "everything else is a widget.",
        "",
    ]
    for cat in sorted(by_cat):
        out.append(f"- **{cat}**: " + ", ".join(f"[{names[n]}](#{_anchor(n)})" for n in by_cat[cat]))
    out.append("")

    pages = {}
    for cat in sorted(by_cat):
        out += [f"## {cat}", ""]
        for node_id in by_cat[cat]:
            cls = classes[node_id]
            out += [f'<a id="{_anchor(node_id)}"></a>', *_node_section(node_id, cls, names[node_id], "###")]
            # hand-written Markdown of a node for docs/nodes.md only (pictures with paths relative to docs/)
            out += [*getattr(cls, "DOCS_MARKDOWN", ()), *([""] if getattr(cls, "DOCS_MARKDOWN", ()) else [])]
            page = [
                *_node_section(node_id, cls, names[node_id], "#"),
                "<!-- Generated by scripts/gen_node_docs.py; the whole reference: docs/nodes.md -->",
            ]
            pages[WEB_DOCS / f"{node_id}.md"] = "\n".join(page).rstrip() + "\n"
    return {OUT: "\n".join(out).rstrip() + "\n", **pages}


def stale(files: dict | None = None) -> list:
    """Generated files that differ from what is on disk, plus stray web/docs/*.md pages (relative paths)."""
    files = render_all() if files is None else files
    bad = [p for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if WEB_DOCS.is_dir():
        bad += [p for p in WEB_DOCS.glob("*.md") if p not in files]
    return sorted(str(p.relative_to(REPO_ROOT)) for p in bad)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 when docs/nodes.md is not up to date")
    g.add_argument("--stdout", action="store_true", help="print the page instead of writing it")
    args = p.parse_args(argv)
    files = render_all()
    if args.stdout:
        sys.stdout.write(files[OUT])
        return 0
    if args.check:
        bad = stale(files)
        if bad:
            print(f"stale: {', '.join(bad)}: run python scripts/gen_node_docs.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(REPO_ROOT)} and {len(files) - 1} pages in web/docs/ are up to date")
        return 0
    WEB_DOCS.mkdir(parents=True, exist_ok=True)
    for path in WEB_DOCS.glob("*.md"):
        if path not in files:
            path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO_ROOT)} and {len(files) - 1} pages in web/docs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
