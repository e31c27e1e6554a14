"""seedstory-batch prompts: the API-format templates and how a job fills one.

:func:`build_prompt` copies a template and fills it by node class (LoadImage.image, SeedStoryGenerateStory's
opening_text/story_steps/seed/captions/mode, SeedStorySaveStory.filename_prefix and, when the job sets them,
layout/pdf; a job's ``cast`` adds one LoadImage per character and a SeedStoryStoryCast node wired to every Generate
Story, :func:`add_cast`), then applies the job's overrides
(``"<node id or title>.<input>": value``); anything that cannot be applied raises :class:`JobInvalid`.

The start image goes into every LoadImage node except those that feed a Story Cast node (the cast pictures:
:func:`start_image_loads`, :func:`cast_image_loads`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import node_sort_key
from .jobs import MAX_CAST, Job, JobInvalid, is_int, safe_name

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = PACKAGE_ROOT / "workflows" / "api"
DEFAULT_TEMPLATE = "seedstory_tiny_story.json"
CAPTIONS_TEMPLATE = "seedstory_visualize_captions.json"

GENERATE_CLASS = "SeedStoryGenerateStory"
SAVE_CLASS = "SeedStorySaveStory"
LOAD_IMAGE_CLASS = "LoadImage"
STORY_CAST_CLASS = "SeedStoryStoryCast"


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


def cast_upload_name(job: Job, k: int, data: bytes) -> str:
    """The name of the job's ``k``-th cast picture (1-based) in the server's input folder: per job, slot and
    content (``data``: the PNG that is uploaded, :func:`.jobs.read_cast_images`)."""
    return f"seedstory_batch_{safe_name(job.id)}_cast{k}_{hashlib.sha256(data).hexdigest()[:10]}.png"


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def cast_image_loads(prompt: dict) -> List[str]:
    """The LoadImage nodes that feed a Story Cast node's pictures (``image_1`` .. ``image_5``), in node then slot
    order."""
    out: List[str] = []
    for nid in nodes_of(prompt, STORY_CAST_CLASS):
        inputs = prompt[nid].get("inputs") or {}
        for k in range(1, MAX_CAST + 1):
            link = inputs.get(f"image_{k}")
            if _is_link(link) and (prompt.get(link[0]) or {}).get("class_type") == LOAD_IMAGE_CLASS:
                if link[0] not in out:
                    out.append(link[0])
    return out


def start_image_loads(prompt: dict) -> List[str]:
    """The LoadImage nodes that take the job's start image: all of them but the cast pictures'."""
    cast = set(cast_image_loads(prompt))
    return [nid for nid in nodes_of(prompt, LOAD_IMAGE_CLASS) if nid not in cast]


def _next_id(prompt: dict) -> int:
    return max([int(k) for k in prompt if str(k).isdigit()] + [0]) + 1


def add_cast(
    prompt: dict, gens: List[str], job: Job, cast_names: Sequence[str], object_info: Optional[dict] = None
) -> str:
    """Give the Generate Story nodes ``gens`` of ``prompt`` the job's cast sheet (in place): one LoadImage per
    character (``cast_names``: the pictures' names in the server's input folder) and one Story Cast node, whose
    visual tokenizer is the first Generate Story's, linked to every Generate Story's ``cast`` input. A Story Cast
    node already in the template is replaced, with the LoadImage nodes that fed only it. Returns the Story Cast id.

    Raises:
        JobInvalid: the server's pack has no Story Cast node or Generate Story has no ``cast`` input (checked against
            /object_info when given), or the Generate Story's visual_tokenizer is not a link.
    """
    where = f"job {job.id} (line {job.line}): 'cast'"
    if object_info:
        gen_inputs = allowed_inputs({"class_type": GENERATE_CLASS}, object_info)
        if STORY_CAST_CLASS not in object_info or "cast" not in gen_inputs:
            raise JobInvalid(
                f"{where} needs the {STORY_CAST_CLASS} node and the 'cast' input of {GENERATE_CLASS}, which the "
                "server's seedstory pack does not have; update the seedstory pack on the server, or drop 'cast'"
            )
    vit = prompt[gens[0]].get("inputs", {}).get("visual_tokenizer")
    if not _is_link(vit):
        raise JobInvalid(f"{where}: node {gens[0]} ({GENERATE_CLASS}) has no linked visual_tokenizer to tokenize it")
    old_loads = set(cast_image_loads(prompt))
    for nid in nodes_of(prompt, STORY_CAST_CLASS):
        del prompt[nid]
    still_used = {v[0] for node in prompt.values() for v in (node.get("inputs") or {}).values() if _is_link(v)}
    for nid in old_loads - still_used:
        del prompt[nid]
    first = _next_id(prompt)
    cast_id = str(first + len(job.cast))
    inputs: Dict[str, Any] = {"visual_tokenizer": list(vit), "resize_mode": "squash"}
    for k in range(1, MAX_CAST + 1):
        member = job.cast[k - 1] if k <= len(job.cast) else None
        if member is not None:
            load_id = str(first + k - 1)
            prompt[load_id] = {
                "class_type": LOAD_IMAGE_CLASS,
                "inputs": {"image": cast_names[k - 1]},
                "_meta": {"title": f"Cast: {member.name}"},
            }
            inputs[f"image_{k}"] = [load_id, 0]
        inputs[f"name_{k}"] = member.name if member is not None else ""
    prompt[cast_id] = {"class_type": STORY_CAST_CLASS, "inputs": inputs, "_meta": {"title": "SeedStory Story Cast"}}
    for nid in gens:
        prompt[nid].setdefault("inputs", {})["cast"] = [cast_id, 0]
    return cast_id


def set_images(prompt: dict, start: str, cast: Sequence[str] = ()) -> None:
    """Put the uploaded pictures' names into ``prompt`` (in place): ``start`` into :func:`start_image_loads`, the
    job's cast pictures ``cast`` (in order) into :func:`cast_image_loads` (nothing there when ``cast`` is empty: a
    template's own cast pictures stay)."""
    for nid in start_image_loads(prompt):
        prompt[nid]["inputs"]["image"] = start
    if cast:
        for nid, name in zip(cast_image_loads(prompt), cast):
            prompt[nid]["inputs"]["image"] = name


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
    template: dict,
    job: Job,
    image_name: Optional[str] = None,
    object_info: Optional[dict] = None,
    cast_names: Optional[Sequence[str]] = None,
) -> dict:
    """Fill a copy of the API-format ``template`` for ``job``: ``image_name`` is the start image's name in the
    server's input folder, ``cast_names`` those of the job's cast pictures, in order (default: the files' names).
    Raises JobInvalid."""
    if job.invalid:
        raise JobInvalid(job.invalid)
    prompt = copy.deepcopy(template)
    loads = start_image_loads(prompt)
    gens = nodes_of(prompt, GENERATE_CLASS)
    saves = nodes_of(prompt, SAVE_CLASS)
    if not loads:
        raise JobInvalid(f"the template has no {LOAD_IMAGE_CLASS} node for the start image")
    if not gens:
        raise JobInvalid(f"the template has no {GENERATE_CLASS} node")
    if job.cast:
        names = list(cast_names) if cast_names is not None else [m.image.name for m in job.cast]
        add_cast(prompt, gens, job, names, object_info)
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
