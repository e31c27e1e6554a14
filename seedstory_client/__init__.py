"""seedstory_client: talk to a running ComfyUI server from outside it (HTTP API + websocket).

Modules:
  * :mod:`seedstory_client.errors` -- the client's errors (``PromptRefused``, ``ExecutionFailed``, ``HTTPFailure``,
    ``ServerGone``) and one-line descriptions of a server's error answers (no HTTP library needed);
  * :mod:`seedstory_client.client` -- ``ComfyClient`` (queue a prompt, history, object_info, view, upload,
    interrupt, free; the websocket follower) and ``is_connection_error``;
  * :mod:`seedstory_client.batch` -- the ``seedstory-batch`` tool (``python -m seedstory_client.batch --help``), a
    package: ``jobs`` (the JSONL file), ``image`` (start images, re-encoded as PNG), ``prompt`` (templates),
    ``summary`` (OUT/summary.json), ``runner`` (the servers, retries, stop signals) and ``cli``;
  * :mod:`seedstory_client.deps` -- the client's third-party packages, checked before a batch starts;
  * :mod:`seedstory_client.launcher` -- start/stop a real ComfyUI server (``start``, ``ServerHandle``, the state file
    of ``scripts/comfy_server.py``), with this pack copied into its ``custom_nodes`` by
    :mod:`seedstory_client.install` (``copy_pack``; ``scripts/install_pack.py``). Both find the pack as the checkout
    holding this package.

A peer of :mod:`seedstory_core`, which never imports it: the nodes run inside ComfyUI and need no HTTP client.
Its own distribution (``seedstory_client/pyproject.toml``): ``pip install ./seedstory_client`` installs it with
``requests``, ``websocket-client``, ``Pillow`` and ``tqdm`` (optional at run time) and the ``seedstory-batch``
command, and no torch, transformers or diffusers. :mod:`seedstory_client.deps` lists and checks these packages.
"""
