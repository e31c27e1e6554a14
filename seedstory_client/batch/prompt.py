"""seedstory-batch prompts: the API-format templates and how a job fills one.

:func:`build_prompt` copies a template and fills it by node class (LoadImage.image, SeedStoryGenerateStory's
opening_text/story_steps/seed/captions/mode, SeedStorySaveStory.filename_prefix and, when the job sets them,
layout/pdf), then applies the job's overrides
(``"<node id or title>.<input>": value``); anything that cannot be applied raises :class:`JobInvalid`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import node_sort_key
from .jobs import Job, JobInvalid, is_int, safe_name

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = PACKAGE_ROOT / "workflows" / "api"
DEFAULT_TEMPLATE = "seedstory_tiny_story.json"
CAPTIONS_TEMPLATE = "seedstory_visualize_captions.json"

GENERATE_CLASS = "SeedStoryGenerateStory"
SAVE_CLASS = "SeedStorySaveStory"
LOAD_IMAGE_CLASS = "LoadImage"


def resolve_template(name: Optional[str], captions: bool = False) -> Path:
    """A template path: explicit file, a name in workflows/api/, or the default for the mode."""
    if not name:
        name = CAPTIONS_TEMPLATE if captions else DEFAULT_TEMPLATE
    p = Path(name).expanduser()
    if p.is_file():
        return p
    # the pack's own templates (editable install / ComfyUI custom_nodes checkout), then ./workflows/api
    for folder in (DEFAULT_TEMPLATE_DIR, Path.cwd() / "workflows" / "api"):
        for cand in (folder / name, folder / f"{name}.json"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"template {name!r} not found (neither a file nor in {DEFAULT_TEMPLATE_DIR})")


def load_template(path: Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        raise ValueError(
            f"{path} is not an API-format workflow ({{id: {{class_type, inputs}}}}); "
            "export it with 'Export (API)' in ComfyUI"
        )
    return data


def nodes_of(prompt: dict, class_type: str) -> List[str]:
    return sorted((k for k, v in prompt.items() if v.get("class_type") == class_type), key=node_sort_key)


def resolve_node(prompt: dict, ref: str) -> str:
    """Node id for ``ref`` (an id, else a unique ``_meta.title``); JobInvalid otherwise."""
    if ref in prompt:
        return ref
    hits = [k for k, v in prompt.items() if (v.get("_meta") or {}).get("title") == ref]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise JobInvalid(f"node title {ref!r} is ambiguous (nodes {sorted(hits, key=node_sort_key)}); use the node id")
    known = ", ".join(
        f"{k} ({(v.get('_meta') or {}).get('title') or v['class_type']})"
        for k, v in sorted(prompt.items(), key=lambda kv: node_sort_key(kv[0]))
    )
    raise JobInvalid(f"no node {ref!r} in the template (nodes: {known})")


def allowed_inputs(node: dict, object_info: Optional[dict] = None) -> set:
    """Input names a node accepts: those in the template, plus required/optional ones from /object_info."""
    names = set((node.get("inputs") or {}).keys())
    info = (object_info or {}).get(node.get("class_type"))
    if info:
        for section in ("required", "optional"):
            names.update((info.get("input") or {}).get(section, {}).keys())
    return names


def apply_overrides(prompt: dict, overrides: Dict[str, Any], object_info: Optional[dict] = None) -> List[str]:
    """Set ``"<node id or title>.<input>": value`` pairs in ``prompt`` (in place). Every key is checked first;
    JobInvalid lists all bad ones. Returns the applied keys as ``id.input``."""
    problems, plan = [], []
    for key, value in overrides.items():
        if not isinstance(key, str) or "." not in key:
            problems.append(f"override {key!r} must look like '<node id or title>.<input name>'")
            continue
        ref, name = key.rsplit(".", 1)
        try:
            nid = resolve_node(prompt, ref)
        except JobInvalid as e:
            problems.append(f"override {key!r}: {e}")
            continue
        node = prompt[nid]
        ok = allowed_inputs(node, object_info)
        if name not in ok:
            problems.append(
                f"override {key!r}: node {nid} ({node['class_type']}) has no input {name!r} "
                f"(inputs: {', '.join(sorted(ok))})"
            )
            continue
        plan.append((nid, name, value))
    if problems:
        raise JobInvalid("; ".join(problems))
    for nid, name, value in plan:
        prompt[nid].setdefault("inputs", {})[name] = value
    return [f"{nid}.{name}" for nid, name, _ in plan]


def job_prefix(job: Job) -> str:
    return f"seedstory_batch/{safe_name(job.id)}/story"


def upload_name(job: Job, data: bytes) -> str:
    """The start image's name in the server's input folder: per job and per content (``data``: the PNG that is
    uploaded, :func:`.jobs.read_start_image`)."""
    return f"seedstory_batch_{safe_name(job.id)}_{hashlib.sha256(data).hexdigest()[:10]}.png"


def input_choices(node: dict, name: str, object_info: Optional[dict] = None) -> Optional[list]:
    """The values /object_info lists for a choice (COMBO) input ``name`` of ``node`` (None: unknown or not a
    choice). Both spellings: ``[[values...], {...}]`` and ``["COMBO", {"options": [...]}]``."""
    info = (object_info or {}).get(node.get("class_type")) or {}
    for section in ("required", "optional"):
        spec = ((info.get("input") or {}).get(section) or {}).get(name)
        if not isinstance(spec, (list, tuple)) or not spec:
            continue
        if isinstance(spec[0], list):
            return list(spec[0])
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return list(spec[1].get("options") or []) or None
    return None


def set_save_inputs(prompt: dict, saves: List[str], job: Job, object_info: Optional[dict] = None) -> None:
    """Set the job's ``layout`` and ``pdf`` (when given) on every Save Story node of ``prompt``. Raises JobInvalid
    when a Save Story node has no such input (the server's pack predates them: checked against /object_info, else
    the template) or the server does not offer the layout."""
    wanted = {k: v for k, v in (("layout", job.layout), ("pdf", job.pdf)) if v is not None}
    if not wanted:
        return
    if not saves:
        raise JobInvalid(f"job {job.id} (line {job.line}): {sorted(wanted)} need a {SAVE_CLASS} node in the template")
    problems = []
    for nid in saves:
        node = prompt[nid]
        ok = allowed_inputs(node, object_info)
        for name, value in wanted.items():
            if name not in ok:
                problems.append(
                    f"the job sets {name!r} but node {nid} ({SAVE_CLASS}) has no input {name!r} on this server "
                    f"(inputs: {', '.join(sorted(ok))}); update the seedstory pack on the server, or drop {name!r}"
                )
                continue
            choices = input_choices(node, name, object_info) if name == "layout" else None
            if choices is not None and value not in choices:
                problems.append(f"'layout' {value!r} is not offered by node {nid} ({SAVE_CLASS}) (choices: {choices})")
                continue
            node.setdefault("inputs", {})[name] = value
    if problems:
        raise JobInvalid(f"job {job.id} (line {job.line}): " + "; ".join(problems))


def build_prompt(
    template: dict, job: Job, image_name: Optional[str] = None, object_info: Optional[dict] = None
) -> dict:
    """Fill a copy of the API-format ``template`` for ``job``. Raises JobInvalid."""
    if job.invalid:
        raise JobInvalid(job.invalid)
    prompt = copy.deepcopy(template)
    loads = nodes_of(prompt, LOAD_IMAGE_CLASS)
    gens = nodes_of(prompt, GENERATE_CLASS)
    saves = nodes_of(prompt, SAVE_CLASS)
    if not loads:
        raise JobInvalid(f"the template has no {LOAD_IMAGE_CLASS} node for the start image")
    if not gens:
        raise JobInvalid(f"the template has no {GENERATE_CLASS} node")
    for nid in loads:
        prompt[nid]["inputs"]["image"] = image_name or (job.image.name if job.image else "")
    for nid in gens:
        inp = prompt[nid]["inputs"]
        inp["opening_text"] = job.text
        if job.frames is not None:
            inp["story_steps"] = job.frames
        if job.seed is not None:
            inp["seed"] = job.seed
        if job.captions is not None:
            inp["captions"] = "\n".join(job.captions)
            inp["mode"] = "visualization"
    for nid in saves:
        prompt[nid]["inputs"]["filename_prefix"] = job_prefix(job) if len(saves) == 1 else f"{job_prefix(job)}_{nid}"
    set_save_inputs(prompt, saves, job, object_info)
    apply_overrides(prompt, job.overrides, object_info)
    return prompt


def total_progress(prompt: dict) -> int:
    """Expected progress units of the Generate Story nodes: frames x diffusion steps (0 when unknown)."""
    total = 0
    for nid in nodes_of(prompt, GENERATE_CLASS):
        inp = prompt[nid]["inputs"]
        s, d = inp.get("story_steps"), inp.get("diffusion_steps")
        if is_int(s) and is_int(d):
            total += s * d
    return total
