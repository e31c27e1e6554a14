"""The example workflows' start picture: SeedStory Example Picture in the UI templates, Load Image in their API twins.

The UI templates (workflows/*.json, opened from ComfyUI's Templates dialog) read the pack's own example picture
(nodes/examples.py), so they run on a fresh install whose input folder is empty. Their API twins (workflows/api/)
keep ComfyUI's Load Image of the same file name: API users and seedstory-batch give their own picture there. Used by
tests/project/test_workflows.py and the browser test to compare a UI template with its twin.
"""

from __future__ import annotations

EXAMPLE_PICTURE = "SeedStoryExamplePicture"


def as_api_twin(prompt: dict) -> dict:
    """``prompt`` (API format, e.g. a UI template converted) with every SeedStory Example Picture node replaced by
    the Load Image node its API twin holds: ``{"picture": name}`` becomes ``{"image": name}``; links to its IMAGE
    output (slot 0) are the same in both. Other nodes are returned as they are."""
    out = {}
    for node_id, node in prompt.items():
        if node.get("class_type") == EXAMPLE_PICTURE:
            node = {**node, "class_type": "LoadImage", "inputs": {"image": node["inputs"]["picture"]}}
        out[node_id] = node
    return out
