"""Helpers shared by the test folders (imported as ``tests.support.<module>``; nothing here is collected as tests).

* ``comfy_harness`` -- pytest plugin: the session fixture ``comfy_server``, a real ComfyUI server with this pack
  installed (registered in tests/conftest.py);
* ``pack_loader`` -- imports the repository root as the ComfyUI pack package, once per session;
* ``comfy_stubs`` -- stand-ins for ComfyUI's modules and helpers to run node functions without ComfyUI;
* ``workflows`` -- where the example workflows are, and which of them need weights this repository does not ship.
* ``configs`` -- small model configurations (``small_config``: a fast 2-layer agent with the official structure);
* ``golden`` -- ``load_fixture``: a golden fixture of the reference set split into meta, weights, inputs, outputs.
"""
