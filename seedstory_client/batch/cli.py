"""seedstory-batch command line: :func:`build_parser` (the options and the --help text) and :func:`main`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .jobs import MAX_CAST, MAX_NAME_CHARS, OK, LocalFileError, load_jobs
from .prompt import CAPTIONS_TEMPLATE, DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_DIR, resolve_template
from .runner import STOP_SIGNALS, Options, RetryPolicy, run_batch
from .summary import SUMMARY_NAME, SummaryError, stderr_log

DEFAULT_SERVER = "http://127.0.0.1:8188"

# exit codes; a batch stopped by a signal exits 128 + its number, as a shell reports a process that the signal ended
EXIT_OK, EXIT_JOBS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SIGHUP, EXIT_SIGTERM = 129, 143


def exit_code_for(stopped: str) -> int:
    """The exit code of a batch stopped by ``stopped`` ("Ctrl-C", "SIGTERM", "SIGHUP", with or without
    " (aborted)"): 128 + the signal's number (130, 143, 129); EXIT_INTERRUPTED for anything else."""
    name = stopped.split(" (", 1)[0]
    codes = {label: 128 + int(signum) for signum, label in STOP_SIGNALS.items()}
    return codes.get(name, EXIT_INTERRUPTED)


def _positive_float(s: str) -> float:
    v = float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seedstory-batch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a JSONL file of SEED-Story jobs through ComfyUI server(s) and download the results.",
        epilog=f"""\
JOBS FILE (JSONL, one object per line; blank and '#' lines are ignored):
  id         job id (default: the line number); names OUT/<id>/
  image      path of the start image (relative paths: to the JSONL file's folder)
  text       the opening sentence (caption of the start image)
  frames     number of new frames = story steps (the storybook has frames+1 pictures);
             default: the template's value, or len(captions)
  seed       sampling/rendering seed (default: the template's)
  captions   ["...", ...] one caption per frame: visualization mode (template {CAPTIONS_TEMPLATE})
  overrides  {{"<node id or node title>.<input name>": value}}, applied last, e.g.
             {{"3.diffusion_steps": 4, "SeedStory Save Story.title": "My story"}};
             an override naming a missing node/input makes the job 'invalid' (not queued)
  template   per-job template (same rules as --template)
  layout     Save Story's page layout: "storybook", "comic" or "strip" (its 'layout' input)
  pdf        true/false: Save Story also writes a PDF (its 'pdf' input); layout and pdf need a server
             whose Save Story has these inputs (checked against /object_info before queueing)
  cast       the story's cast sheet: [{{"name": "Max", "image": "max.png"}}, ...], 1 to {MAX_CAST} characters with
             distinct names (one line, at most {MAX_NAME_CHARS} characters, no ':', '<' or '>'); each picture
             is checked and uploaded like the start image (paths relative to the JSONL file's folder). The
             prompt gains a LoadImage per picture and a SeedStoryStoryCast node wired to Generate Story's
             'cast' input (replacing a Story Cast node of the template); needs a server whose pack has them
  A job is 'invalid' (never queued) when its image is not a PNG, JPEG, WebP, BMP, GIF or TIFF picture
  that Pillow can read (the picture is re-encoded as PNG before the upload: no other file's bytes leave
  this machine; an animated picture sends its first frame), or when its id cannot name its folder: only
  dots, a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, also with an extension) or
  summary.json (the client's own file). A jobs file that is not UTF-8 text is refused as a whole (exit 2).

TEMPLATES: API-format workflows (ComfyUI 'Export (API)'); a file path or a name in {DEFAULT_TEMPLATE_DIR}.
  Filled by class: LoadImage.image <- the uploaded start image (except the LoadImage nodes that feed a
  Story Cast node: the template's own cast pictures, or the job's cast); SeedStoryGenerateStory.opening_text/
  story_steps/seed (+ captions, mode=visualization); SeedStorySaveStory.filename_prefix <-
  seedstory_batch/<id>/story (+ layout, pdf when the job sets them).

OUTPUT: OUT/<id>/ gets the frames (frame_000.png ...), index.html + story.json (the storybook),
  story.pdf (with "pdf": true), story.txt, prompt.json and history.json; OUT/summary.json has per job:
  status (ok | error | invalid | interrupted), error (with node_errors details: node id, class_type,
  input, message), seconds, outputs, storybook (path under the server's output folder), local_storybook,
  pdf + local_pdf (with "pdf": true), prompt_id, server, attempts.
  'invalid' = refused before running (bad job line, bad override, server validation/node_errors).

  An HTTP error answer (4xx/5xx) makes that job 'error' with http_status and http_body; a local file that
  cannot be read or written (start image, OUT/...) makes it 'error' naming the file; the batch goes on.

RESUME: jobs with status ok in OUT/summary.json whose outputs still exist are skipped (--force redoes).
  A summary.json that cannot be parsed is kept as summary.json.corrupt-<time> (with a warning) and a new
  one is started.
RETRIES: only on connection loss (refused, reset, timeout, dropped websocket) the client reconnects with
  exponential backoff, asks /queue (and /history) about the prompt before queueing it again, at most
  --retries times per job; with several servers, a job whose server stays down is handed to another
  server; when none is left the remaining jobs are 'error' ("not run: no reachable server (tried URL...)").
CTRL-C, SIGTERM, SIGHUP: the first one interrupts the running prompt(s) on the server(s) (removed from the
  queue if still pending), records them 'interrupted', records the queued jobs 'interrupted' (not run),
  writes summary.json ("stopped": "Ctrl-C" | "SIGTERM" | "SIGHUP") and exits 130 / 143 / 129; run the same
  command again to resume. A second one quits at once (running jobs still recorded 'interrupted').
  kill -9 cannot be caught: the running prompt goes on on the server, the job has no record (or its
  previous one), and the next run queues it again.
SERVERS: --server is repeatable; one worker thread per server pulls jobs from a shared queue.
EXIT CODE: 0 all jobs ok (or skipped); 1 some job failed/invalid/interrupted; 2 usage error (also: an
  unreadable summary.json, a jobs file that is not UTF-8 text); 130 stopped by Ctrl-C; 143 by SIGTERM;
  129 by SIGHUP. A missing package (requests, websocket-client, Pillow) stops it before anything runs.
""",
    )
    p.add_argument("jobs", help="JSONL job file")
    p.add_argument("-o", "--out", default="seedstory_batch_out", help="output folder (default: %(default)s)")
    p.add_argument(
        "-s",
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help=f"ComfyUI base URL; repeat for several servers (default: $SEEDSTORY_COMFY_URL or {DEFAULT_SERVER})",
    )
    p.add_argument(
        "-t",
        "--template",
        default=None,
        help=f"API-format template (file or name in workflows/api; default {DEFAULT_TEMPLATE}, "
        f"{CAPTIONS_TEMPLATE} for jobs with captions)",
    )
    p.add_argument("--force", action="store_true", help="redo jobs that summary.json says are done")
    p.add_argument("--retries", type=int, default=5, help="reconnect attempts per job (default: %(default)s)")
    p.add_argument(
        "--backoff",
        type=_positive_float,
        default=1.0,
        help="first reconnect wait in s, doubled each time, max 30 s (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=3600.0,
        help="per-job limit in s; the prompt is interrupted after it (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (tqdm, optional: none without it)")
    p.add_argument(
        "--print-storybooks",
        action="store_true",
        help="print each ok job's storybook (server-relative path) on stdout, one per line",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    servers = args.servers or [os.environ.get("SEEDSTORY_COMFY_URL") or DEFAULT_SERVER]
    servers = list(dict.fromkeys(s.rstrip("/") for s in servers))
    if args.retries < 0:
        print("seedstory-batch: --retries must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        jobs = load_jobs(Path(args.jobs))
        if args.template:
            resolve_template(args.template)
    except (OSError, ValueError) as e:
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print(f"seedstory-batch: no jobs in {args.jobs}", file=sys.stderr)
        return EXIT_USAGE
    opts = Options(
        out_dir=Path(args.out),
        template=args.template,
        force=args.force,
        timeout=args.timeout,
        progress=not args.no_progress,
        retry=RetryPolicy(retries=args.retries, backoff=args.backoff),
    )
    stderr_log(f"[batch] {len(jobs)} job(s) from {args.jobs} on {len(servers)} server(s): {', '.join(servers)}")
    try:
        data = run_batch(jobs, servers, opts, jobs_file=str(args.jobs))
    except SummaryError as e:
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LocalFileError as e:  # the output folder itself
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # a second stop signal (BatchAborted): run_batch has recorded what it could
        return exit_code_for(getattr(e, "reason", "Ctrl-C"))
    recs = [data["jobs"].get(j.id) or {} for j in jobs]
    failed = [r for r in recs if r.get("status") != OK]
    stderr_log(f"[batch] done: {data.get('counts')}; summary {Path(args.out) / SUMMARY_NAME}")
    if args.print_storybooks:
        for r in recs:
            if r.get("status") == OK and r.get("storybook"):
                print(r["storybook"], flush=True)
    if data.get("stopped"):
        return exit_code_for(data["stopped"])
    return EXIT_JOBS_FAILED if failed or data.get("write_error") else EXIT_OK
