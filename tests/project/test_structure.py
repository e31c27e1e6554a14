"""The house rules of docs/architecture.md, checked on the source (no import of the code under test):

* the packages depend one way: ``seedstory_core`` imports no other package of the repository (and never ComfyUI),
  ``evaluation`` imports ``seedstory_core`` only, ``seedstory_client`` imports neither torch nor the library;
* no module imports a private name (leading underscore) of another package;
* inside ``seedstory_core``, no import loop;
* nodes stay thin: no method of a node class over ~60 lines;
* every ComfyUI module is imported by ``nodes/comfy_glue.py`` only.

Imports at the top are ruff's rule (PLC0415, with the lazy modules listed once in pyproject.toml), checked by
tests/project/test_lint.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import require_or_skip

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("seedstory_core", "nodes", "training", "evaluation", "bench", "seedstory_client", "scripts", "tests")
COMFYUI_MODULES = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "aiohttp")
#: What each package may import of the repository's packages (besides itself).
ALLOWED = {
    "seedstory_core": set(),
    "evaluation": {"seedstory_core"},
    "seedstory_client": set(),
    "training": {"seedstory_core", "evaluation"},
    "bench": {"seedstory_core", "evaluation", "training"},
    "nodes": {"seedstory_core", "training"},
}
NODE_METHOD_MAX_LINES = 60


def _files(package: str):
    return sorted(p for p in (REPO / package).rglob("*.py") if "node_modules" not in p.parts)


def _imports(path: Path):
    """(module name as written, level, imported names, line) of every import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, [a.name for a in node.names], node.lineno


def _absolute(path: Path, module: str, level: int) -> str:
    """The absolute dotted name of an import in ``path`` (relative imports resolved against its package)."""
    if level == 0:
        return module
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    base = parts[: len(parts) - level]
    return ".".join(base + ([module] if module else []))


def test_packages_depend_one_way():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in _files(package):
            for module, level, _names, line in _imports(path):
                top = _absolute(path, module, level).split(".")[0]
                if top in PACKAGES and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {top}")
                if package == "seedstory_client" and top in ("torch", "seedstory_core", "transformers", "diffusers"):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {top} (the client stays light)")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_packages():
    wrong = []
    for package in PACKAGES:
        for path in _files(package):
            for module, level, names, line in _imports(path):
                target = _absolute(path, module, level)
                if target.split(".")[0] == package:
                    continue
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    wrong.append(f"{path.relative_to(REPO)}:{line} from {target} import {', '.join(private)}")
    assert not wrong, "\n".join(wrong)


def _imported_names(path: Path, package: str):
    """{local name: source module} for every name ``path`` imports from another package of the repository."""
    names = {}
    for module, level, imported, _line in _imports(path):
        target = _absolute(path, module, level)
        top = target.split(".")[0]
        if top == package or top not in PACKAGES:
            continue
        if imported:
            names.update({n: f"{target}.{n}" for n in imported if n != "*"})
        else:
            names[target.split(".")[0]] = target
    return names


def test_no_private_attribute_of_another_package_is_used():
    """``mini._helper(...)`` or ``StoryEngine._method`` on a name imported from another package is a private import
    by another road."""
    wrong = []
    for package in PACKAGES:
        for path in _files(package):
            names = _imported_names(path, package)
            if not names:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name)
                    and node.value.id in names
                ):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_comfyui_is_imported_by_comfy_glue_only():
    glue = REPO / "nodes" / "comfy_glue.py"
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for package in ("nodes", "seedstory_core", "training", "evaluation")
        for path in _files(package)
        if path != glue
        for module, level, _names, line in _imports(path)
        if level == 0 and module.split(".")[0] in COMFYUI_MODULES
    ]
    root = REPO / "__init__.py"
    wrong += [
        f"__init__.py:{ln} imports {m}"
        for m, lv, _n, ln in _imports(root)
        if not lv and m.split(".")[0] in COMFYUI_MODULES
    ]
    assert not wrong, "\n".join(wrong)


def _core_module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_no_import_loop_in_the_core():
    modules = {_core_module(p): p for p in _files("seedstory_core")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, level, names, _line in _imports(path):
            target = _absolute(path, module, level).removesuffix(".__init__")
            for n in names or [None]:  # `from . import mini` imports the module seedstory_core.data.mini
                cand = f"{target}.{n}" if n else target
                deps.add(cand if cand in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    done, stack, loops = set(), [], []

    def visit(node):
        if node in stack:
            loops.append(" -> ".join(stack[stack.index(node) :] + [node]))
            return
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        if node != "seedstory_core":  # the package's __init__ may re-export its modules
            visit(node)
    assert not loops, "import loops: " + "; ".join(loops)


def _is_node_class(cls: ast.ClassDef) -> bool:
    return any(
        isinstance(s, ast.Assign) and any(getattr(t, "id", "") == "NODE_ID" for t in s.targets) for s in cls.body
    )


@pytest.mark.parametrize("path", _files("nodes"), ids=lambda p: p.name)
def test_node_methods_stay_short(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{cls.name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and _is_node_class(cls)
        for fn in cls.body
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        and fn.end_lineno - fn.lineno + 1 > NODE_METHOD_MAX_LINES
    ]
    assert not long, (
        f"node methods over {NODE_METHOD_MAX_LINES} lines (move the work into the core or a helper): {long}"
    )


def test_every_node_class_declares_its_id_display_name_and_aliases_once():
    classes = [
        cls
        for path in _files("nodes")
        for cls in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(cls, ast.ClassDef) and cls.name.startswith("SeedStory") and not cls.name.endswith("Error")
    ]
    assert len(classes) == 17
    for cls in classes:
        declared = {t.id for s in cls.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
        assert {"NODE_ID", "DISPLAY_NAME", "SEARCH_ALIASES"} <= declared, cls.name
    assert "SEARCH_ALIASES" not in (REPO / "nodes" / "__init__.py").read_text(encoding="utf-8").split('"""')[-1]


@pytest.mark.parametrize("release", ["0.3.75", "0.30.0"])
def test_the_v1_decision_still_stands_on_the_supported_releases(release):
    """docs/architecture.md keeps ComfyUI's V1 node API because V3 (``comfy_api.latest``) is marked unstable on both
    supported releases; when a release marks it stable, this fails and the decision is due again."""
    latest = REPO / ".comfyui" / f"ComfyUI-{release}" / "comfy_api" / "latest" / "__init__.py"
    if not latest.is_file():
        require_or_skip(
            f"ComfyUI {release} is not provisioned (bash scripts/provision_comfyui.sh)", "SEEDSTORY_REQUIRE_COMFYUI"
        )
    text = latest.read_text(encoding="utf-8")
    assert "class ComfyAPI_latest" in text and "STABLE = False" in text
