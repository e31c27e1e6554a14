"""seedstory: SEED-Story (multimodal long story generation) for ComfyUI.

ComfyUI imports this folder as a custom-node pack. Nothing from ComfyUI (comfy, folder_paths, server) is imported
here or at module level in nodes/: nodes/comfy_glue.py imports those lazily, so the pack also imports (and its
tests run) without ComfyUI. The pure library lives in seedstory_core/.
"""

import importlib.util
import os
import sys

# Installed with `pip install -e .` seedstory_core is importable already; a plain copy in custom_nodes needs the
# pack folder on sys.path (appended, so it never shadows ComfyUI's own modules such as `nodes`).
if importlib.util.find_spec("seedstory_core") is None:
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:
        sys.path.append(_here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
