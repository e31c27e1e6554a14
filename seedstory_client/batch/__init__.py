"""seedstory-batch: run many SEED-Story jobs through one or more ComfyUI servers (HTTP API + websocket).

Usage::

    seedstory-batch jobs.jsonl -o OUT [--server URL ...] [--template FILE] [--force] ...
    python -m seedstory_client.batch --help

jobs.jsonl has one JSON object per line (blank lines and lines starting with '#' are ignored)::

    {"id": "boat", "image": "start.png", "text": "A little red boat sets out.", "frames": 3, "seed": 7}
    {"image": "start.png", "text": "George woke up.", "captions": ["He ate.", "He played."], "seed": 1}
    {"image": "start.png", "text": "Hi.", "overrides": {"3.diffusion_steps": 4, "SeedStory Save Story.title": "T"}}
    {"id": "comic", "image": "start.png", "text": "Hi.", "layout": "comic", "pdf": true}

For every job: the start image is checked and re-encoded as PNG (:mod:`.image`: only a picture's pixels leave the
machine) and uploaded (POST /upload/image, a per-job name, overwrite), the API-format template is filled
(LoadImage.image, SeedStoryGenerateStory.opening_text/story_steps/seed/captions/mode,
SeedStorySaveStory.filename_prefix and the job's layout/pdf, then the overrides), the prompt is queued (POST
/prompt), followed over the websocket (a tqdm bar over frames x diffusion steps, when tqdm is installed), and its
outputs (/history -> /view: the frames, the texts and the storybook's index.html + story.json) are downloaded into
OUT/<job id>/. OUT/summary.json is rewritten after every job. All HTTP and websocket traffic goes through
:class:`seedstory_client.client.ComfyClient` (one per server); besides that client's ``requests`` and
``websocket-client`` it needs ``Pillow``, and ``tqdm`` for progress bars (optional). Every package is checked when
this package is imported (:mod:`.preflight`), before any job is read or queued. Installed on its own with
``pip install ./seedstory_client`` (no torch).

Faults (each keeps every job in summary.json):
  * Ctrl-C, SIGTERM, SIGHUP: the first one interrupts the running prompt(s) on the server(s) (``POST /queue
    {"delete": [id]}`` then ``POST /interrupt {"prompt_id": id}``), records them ``interrupted``, writes the
    summary and exits 130 / 143 / 129; a second one quits at once (still recording the running jobs as
    ``interrupted``). ``kill -9`` cannot be caught: the next run queues the job again.
  * Connection errors (refused, reset, timeouts, a dropped websocket) are retried with backoff; a server that
    stays unreachable hands its job to another server or, when none is left, the rest are ``not run``.
  * An HTTP error answer (4xx/5xx) is a job error with its status and body (``http_status``, ``http_body``); a
    local file that cannot be read or written is a job error naming the file. Neither retires the server.
  * A summary.json that cannot be parsed is kept as ``summary.json.corrupt-<time>`` with a warning.

Modules (the package re-exports what a caller uses, e.g. ``from seedstory_client.batch import run_batch``;
helpers stay in their module):
  * :mod:`.preflight` -- imported first: the packages the batch needs (``seedstory_client.deps``);
  * :mod:`.jobs` -- the JSONL job file: ``Job``, ``parse_job``, ``load_jobs``, ``safe_name``, ``id_problem``, the
    job statuses;
  * :mod:`.image` -- start images: ``picture_problem``, ``encode_png`` (re-encoded as PNG before the upload);
  * :mod:`.progress` -- progress bars (tqdm, optional) and the log lines;
  * :mod:`.prompt` -- the templates and ``build_prompt`` (filling, ``apply_overrides``, ``total_progress``);
  * :mod:`.summary` -- OUT/summary.json (``Summary``, ``load_summary``, ``is_done``) and atomic writes;
  * :mod:`.runner` -- ``JobRunner`` (one server), ``run_batch`` (all servers, stop signals), ``Options``,
    ``RetryPolicy``;
  * :mod:`.cli` -- ``build_parser`` and ``main``: the ``seedstory-batch`` command (also ``python -m
    seedstory_client.batch``, :mod:`.__main__`).
"""

from . import preflight  # noqa: F401 - first: every package the batch needs is checked before anything else

from .cli import (
    DEFAULT_SERVER,
    EXIT_INTERRUPTED,
    EXIT_JOBS_FAILED,
    EXIT_OK,
    EXIT_SIGHUP,
    EXIT_SIGTERM,
    EXIT_USAGE,
    build_parser,
    exit_code_for,
    main,
)
from .image import FORMATS, NotAPicture, encode_png, picture_problem
from .jobs import (
    ERROR,
    INTERRUPTED,
    INVALID,
    LAYOUTS,
    MAX_CAST,
    OK,
    CastMember,
    Job,
    JobInvalid,
    LocalFileError,
    id_problem,
    load_jobs,
    parse_job,
    read_cast_images,
    safe_name,
)
from .prompt import (
    CAPTIONS_TEMPLATE,
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATE_DIR,
    GENERATE_CLASS,
    LOAD_IMAGE_CLASS,
    SAVE_CLASS,
    STORY_CAST_CLASS,
    add_cast,
    allowed_inputs,
    apply_overrides,
    build_prompt,
    cast_image_loads,
    load_template,
    resolve_template,
    set_images,
    start_image_loads,
    total_progress,
)
from .runner import INTERRUPT_GRACE_S, STOP_SIGNALS, BatchAborted, JobRunner, Options, RetryPolicy, run_batch
from .summary import (
    SUMMARY_NAME,
    Summary,
    SummaryError,
    is_done,
    load_summary,
)

__all__ = [
    "BatchAborted",
    "CastMember",
    "CAPTIONS_TEMPLATE",
    "DEFAULT_SERVER",
    "DEFAULT_TEMPLATE",
    "DEFAULT_TEMPLATE_DIR",
    "ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_JOBS_FAILED",
    "EXIT_OK",
    "EXIT_SIGHUP",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "FORMATS",
    "GENERATE_CLASS",
    "INTERRUPTED",
    "INTERRUPT_GRACE_S",
    "INVALID",
    "Job",
    "JobInvalid",
    "JobRunner",
    "LAYOUTS",
    "LOAD_IMAGE_CLASS",
    "LocalFileError",
    "MAX_CAST",
    "NotAPicture",
    "OK",
    "Options",
    "RetryPolicy",
    "SAVE_CLASS",
    "STOP_SIGNALS",
    "STORY_CAST_CLASS",
    "SUMMARY_NAME",
    "Summary",
    "SummaryError",
    "add_cast",
    "allowed_inputs",
    "apply_overrides",
    "build_parser",
    "build_prompt",
    "cast_image_loads",
    "encode_png",
    "exit_code_for",
    "id_problem",
    "is_done",
    "load_jobs",
    "load_summary",
    "load_template",
    "main",
    "parse_job",
    "picture_problem",
    "read_cast_images",
    "resolve_template",
    "run_batch",
    "safe_name",
    "set_images",
    "start_image_loads",
    "total_progress",
]
