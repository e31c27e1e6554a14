"""SeedStory ComfyUI nodes (ComfyUI's V1 node API; why V1: docs/architecture.md, "Nodes").

One table, :data:`NODES`: every node class declares its own id (``NODE_ID``), display name (``DISPLAY_NAME``) and
search aliases (``SEARCH_ALIASES``, the other words users search for: ComfyUI 0.30.0 sends them as
``search_aliases`` in /object_info and its node search matches them; 0.3.75 ignores the attribute). ComfyUI's two
mappings are derived from it. Importing this package never imports ComfyUI modules (nodes/comfy_glue.py does,
lazily).
"""

from .loaders import (
    SeedStoryAgentLoader,
    SeedStoryDetokenizerLoader,
    SeedStoryTinyModelLoader,
    SeedStoryVisualTokenizerLoader,
)
from .cast import SeedStoryStoryCast
from .examples import SeedStoryExamplePicture
from .output import SeedStoryFreeMemory, SeedStorySaveStory
from .redo import SeedStoryRedoFrame
from .render import SeedStoryDetokenize, SeedStoryFeaturesToConditioning
from .settings import SeedStoryStorySettings
from .story import SeedStoryGenerateStory, SeedStoryStoryStart, SeedStoryStoryStep, SeedStoryViTTokenize
from .training import SeedStoryAdaptDetokenizer

#: Every node of the pack, in the order of the node library and docs/nodes.md.
NODES = (
    SeedStoryTinyModelLoader,
    SeedStoryVisualTokenizerLoader,
    SeedStoryAgentLoader,
    SeedStoryDetokenizerLoader,
    SeedStoryExamplePicture,
    SeedStoryViTTokenize,
    SeedStoryStorySettings,
    SeedStoryStoryCast,
    SeedStoryStoryStart,
    SeedStoryStoryStep,
    SeedStoryGenerateStory,
    SeedStoryRedoFrame,
    SeedStoryDetokenize,
    SeedStoryFeaturesToConditioning,
    SeedStorySaveStory,
    SeedStoryFreeMemory,
    SeedStoryAdaptDetokenizer,
)

NODE_CLASS_MAPPINGS = {cls.NODE_ID: cls for cls in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.NODE_ID: cls.DISPLAY_NAME for cls in NODES}
if len(NODE_CLASS_MAPPINGS) != len(NODES):  # pragma: no cover - a copy-paste slip in a NODE_ID
    raise RuntimeError(f"duplicate SeedStory node ids: {sorted(cls.NODE_ID for cls in NODES)}")

__all__ = ["NODES", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
