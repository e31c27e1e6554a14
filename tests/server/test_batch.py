"""seedstory-batch (the package seedstory_client/batch/).

Two parts:
  * pure unit tests (no ComfyUI): job parsing, template filling, override validation, node_errors messages,
    summary/resume logic, retry logic and multi-server distribution against a fake transport;
  * real-server tests (``comfyui`` marker, fixture ``comfy_server``): a 4-job batch end to end through the CLI
    (2 ok, 2 invalid) and its resume, two servers sharing a batch, and a server killed and restarted mid-job.
    Everything runs the tiny model at 64 px with 2-3 diffusion steps.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websocket
from PIL import Image

from seedstory_client import batch as B
from seedstory_client import launcher
from seedstory_client.errors import PromptRefused, describe_execution_error, describe_node_errors

REPO_ROOT = Path(__file__).resolve().parents[2]
START_PNG = REPO_ROOT / "workflows" / "assets" / "seedstory_start.png"
TINY = B.load_template(B.DEFAULT_TEMPLATE_DIR / B.DEFAULT_TEMPLATE)
VIS = B.load_template(B.DEFAULT_TEMPLATE_DIR / B.CAPTIONS_TEMPLATE)


def job(**kw) -> B.Job:
    return B.parse_job({"image": str(START_PNG), "text": "A boat sails.", **kw}, 1, REPO_ROOT)


def write_jobs(path: Path, *objs) -> Path:
    path.write_text("\n".join(json.dumps(o) for o in objs) + "\n")
    return path


# ================================================================================================ pure unit
def test_parse_job_fields_and_defaults(tmp_path):
    (tmp_path / "start.png").write_bytes(START_PNG.read_bytes())
    f = tmp_path / "jobs.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"image": "start.png", "text": "Hi.", "frames": 2, "seed": 5}),
                "# a comment",
                "",
                json.dumps({"id": "caps", "image": "start.png", "text": "Hi.", "captions": ["One.", "Two.", "Three."]}),
                "{not json",
                json.dumps({"id": "bad", "image": "missing.png", "text": 3, "frames": 0, "seed": -1, "colour": 1}),
            ]
        )
        + "\n"
    )
    jobs = B.load_jobs(f)
    assert [j.id for j in jobs] == ["1", "caps", "5", "bad"]  # default id = line number
    assert jobs[0].image == tmp_path / "start.png" and jobs[0].frames == 2 and jobs[0].seed == 5
    assert jobs[0].invalid is None
    assert jobs[1].frames == 3 and jobs[1].captions == ["One.", "Two.", "Three."]
    assert "not valid JSON" in jobs[2].invalid
    msg = jobs[3].invalid
    for part in ("unknown field", "not found", "'text'", "'frames'", "'seed'"):
        assert part in msg, (part, msg)


def test_duplicate_ids_are_a_usage_error(tmp_path):
    f = write_jobs(
        tmp_path / "j.jsonl",
        {"id": "x", "image": str(START_PNG), "text": "a"},
        {"id": "x", "image": str(START_PNG), "text": "b"},
    )
    with pytest.raises(ValueError, match="duplicate job id 'x'"):
        B.load_jobs(f)


def test_captions_need_one_per_frame():
    assert "one caption per frame" in job(captions=["a"], frames=2).invalid
    assert job(captions=["a", "b"], frames=1).invalid is None


def test_build_prompt_fills_the_template():
    j = job(id="my job/1", frames=5, seed=9, overrides={"3.diffusion_steps": 2, "SeedStory Save Story.title": "T"})
    p = B.build_prompt(TINY, j, "up.png")
    assert p["2"]["inputs"]["image"] == "up.png"
    g = p["3"]["inputs"]
    assert (g["opening_text"], g["story_steps"], g["seed"], g["diffusion_steps"]) == ("A boat sails.", 5, 9, 2)
    assert g["mode"] == "generation"
    assert p["4"]["inputs"]["filename_prefix"] == "seedstory_batch/my_job_1/story"
    assert p["4"]["inputs"]["title"] == "T"
    assert p["3"]["inputs"]["agent"] == ["1", 0]  # links untouched
    assert TINY["3"]["inputs"]["story_steps"] == 3  # template not mutated
    assert B.total_progress(p) == 10


def test_build_prompt_captions_switch_to_visualization():
    p = B.build_prompt(TINY, job(captions=["One.", "Two."]), "x.png")
    assert p["3"]["inputs"]["mode"] == "visualization" and p["3"]["inputs"]["captions"] == "One.\nTwo."
    assert p["3"]["inputs"]["story_steps"] == 2
    assert B.resolve_template(None, captions=True).name == B.CAPTIONS_TEMPLATE
    assert B.resolve_template(None).name == B.DEFAULT_TEMPLATE
    assert B.resolve_template("seedstory_visualize_captions") == B.DEFAULT_TEMPLATE_DIR / B.CAPTIONS_TEMPLATE


def test_override_validation():
    with pytest.raises(B.JobInvalid) as e:
        B.build_prompt(TINY, job(overrides={"3.nope": 1, "99.seed": 1, "no_dot": 1, "Start image.image": "a.png"}))
    msg = str(e.value)
    assert "node 3 (SeedStoryGenerateStory) has no input 'nope'" in msg
    assert "no node '99'" in msg and "'no_dot'" in msg
    assert "Start image.image" not in msg  # that one is fine (title lookup)
    # optional inputs absent from the template are accepted when /object_info lists them
    info = {"SeedStoryGenerateStory": {"input": {"required": {}, "optional": {"settings": ["X", {}]}}}}
    with pytest.raises(B.JobInvalid):
        B.build_prompt(TINY, job(overrides={"3.settings": ["9", 0]}))
    p = B.build_prompt(TINY, job(overrides={"3.settings": ["9", 0]}), "x.png", object_info=info)
    assert p["3"]["inputs"]["settings"] == ["9", 0]
    # ambiguous titles
    dup = json.loads(json.dumps(TINY))
    dup["1"]["_meta"]["title"] = dup["3"]["_meta"]["title"]
    with pytest.raises(B.JobInvalid, match="ambiguous"):
        B.apply_overrides(dup, {"SeedStory Generate Story.seed": 1})


def test_node_errors_are_described():
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
        },
        "node_errors": {
            "3": {
                "class_type": "SeedStoryGenerateStory",
                "dependent_outputs": ["4"],
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": "opening_text - is empty",
                        "extra_info": {"input_name": "opening_text"},
                    }
                ],
            },
            "1": {
                "class_type": "EmptyImage",
                "errors": [
                    {
                        "type": "value_smaller_than_min",
                        "message": "Value 0 smaller than min of 1",
                        "details": "width",
                        "extra_info": {"input_name": "width"},
                    }
                ],
            },
        },
    }
    lines = describe_node_errors(body["node_errors"])
    assert lines == [
        "node 1 (EmptyImage) input 'width': Value 0 smaller than min of 1",
        "node 3 (SeedStoryGenerateStory) input 'opening_text': Custom validation failed for node: "
        "opening_text - is empty",
    ]
    err = PromptRefused(400, body)
    assert str(err).startswith("Prompt outputs failed validation: node 1 (EmptyImage)")
    assert (
        describe_execution_error(
            {"node_id": "3", "node_type": "X", "exception_type": "ValueError", "exception_message": "boom\n"}
        )
        == "node 3 (X) raised ValueError: boom"
    )


def test_help_documents_everything(capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "--server",
        "--template",
        "--force",
        "--retries",
        "--backoff",
        "--timeout",
        "overrides",
        "captions",
        "summary.json",
        "RESUME",
        "EXIT CODE",
        "interrupted",
        "node_errors",
    ):
        assert word in out, word


def test_usage_errors_exit_2(tmp_path, capsys):
    assert B.main([str(tmp_path / "missing.jsonl")]) == B.EXIT_USAGE
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n# nothing\n")
    assert B.main([str(empty)]) == B.EXIT_USAGE


# ------------------------------------------------------------------------------------------------ fake server
class FakeWS:
    def __init__(self, srv: "FakeTransport"):
        self.srv = srv

    def settimeout(self, t):
        pass

    def recv(self):
        return self.srv.next_frame()

    def close(self):
        pass


class FakeTransport:
    """Enough of ComfyUI for JobRunner: queue -> (progress, done) over the 'websocket', /history, /view.

    ``drop``: a list of actions, one per websocket drop, consumed in order while a prompt runs:
      "finish"  - the prompt completes while we are disconnected (history has it; must NOT be re-queued)
      "running" - it is still running when we come back (in /queue; follow it again)
      "restart" - the server restarted: history and queue are empty (re-upload and re-queue)
    ``down``: connect_ws raises ConnectionRefusedError this many times (or always, when True).
    """

    def __init__(self, base_url="http://fake", drop=(), down=0, delay=0.0):
        self.base_url = base_url
        self.drop = list(drop)
        self.down = down
        self.delay = delay
        self.posted, self.uploads, self.connects = [], [], 0
        self.histories, self.running, self.frames = {}, [], []
        self.lock = threading.Lock()

    def object_info(self):
        return {}

    def connect_ws(self):
        self.connects += 1
        if self.down is True or (self.down and self.connects <= self.down):
            raise ConnectionRefusedError(111, "Connection refused")
        return FakeWS(self)

    def upload_image(self, data, name):
        self.uploads.append(name)
        return {"name": name, "subfolder": "", "type": "input"}

    def queue_prompt(self, prompt, prompt_id=None):
        pid = f"{self.base_url}-p{len(self.posted)}"
        self.posted.append((pid, prompt))
        self.running.append(pid)
        n = prompt["3"]["inputs"]["story_steps"] * prompt["3"]["inputs"]["diffusion_steps"]
        self.frames = [
            json.dumps({"type": "progress", "data": {"prompt_id": pid, "node": "3", "value": i + 1, "max": n}})
            for i in range(n)
        ]
        self.frames.append(json.dumps({"type": "executing", "data": {"prompt_id": pid, "node": None}}))
        return {"prompt_id": pid, "number": len(self.posted), "node_errors": {}}

    def _complete(self, pid):
        prompt = dict(self.posted)[pid]
        n = prompt["3"]["inputs"]["story_steps"] + 1
        sub = f"seedstory_batch/x/story_{len(self.histories) + 1:05d}"
        imgs = [{"filename": f"frame_{i:03d}.png", "subfolder": sub, "type": "output"} for i in range(n)]
        self.histories[pid] = {
            "outputs": {"4": {"images": imgs, "text": ["one\ntwo"], "storybook": [sub + "/index.html"]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        self.running.remove(pid)

    def next_frame(self):
        if self.delay:
            time.sleep(self.delay)
        if not self.frames:
            raise websocket.WebSocketTimeoutException("idle")
        if self.drop and len(self.frames) == 2:  # mid-run
            action = self.drop.pop(0)
            pid = self.running[-1]
            if action == "finish":
                self._complete(pid)
                self.frames = []
            elif action == "restart":
                self.running.clear()
                self.frames = []
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        frame = self.frames.pop(0)
        if '"node": null' in frame:
            self._complete(json.loads(frame)["data"]["prompt_id"])
        return frame

    def history_entry(self, pid):
        return self.histories.get(pid)

    def queue_state(self):
        return {"queue_running": [[0, pid, {}, {}, []] for pid in self.running], "queue_pending": []}

    def view(self, filename, subfolder="", type="output"):
        return b"\x89PNG fake " + f"{subfolder}/{filename}".encode()

    def cancel(self, pid):
        pass


def fake_opts(tmp_path, retries=3, **kw):
    sleeps = []
    pol = B.RetryPolicy(retries=retries, backoff=0.5, sleep=sleeps.append)
    return B.Options(out_dir=tmp_path / "out", progress=False, retry=pol, poll=0.05, **kw), sleeps


def run_one(tmp_path, fake, retries=3, **jobkw):
    opts, sleeps = fake_opts(tmp_path, retries)
    runner = B.JobRunner(fake, opts, log=lambda m: None)
    return runner.run(job(id="j", frames=2, overrides={"3.diffusion_steps": 2}, **jobkw)), sleeps


def test_fake_job_ok_downloads_outputs(tmp_path):
    fake = FakeTransport()
    rec, sleeps = run_one(tmp_path, fake)
    assert rec["status"] == "ok", rec
    assert rec["attempts"] == 1 and len(fake.posted) == 1 and sleeps == []
    names = sorted(Path(p).name for p in rec["outputs"])
    assert names == ["frame_000.png", "frame_001.png", "frame_002.png", "index.html", "story.json", "story.txt"]
    assert rec["storybook"].endswith("/index.html") and Path(rec["local_storybook"]).is_file()
    assert (tmp_path / "out" / "j" / "prompt.json").is_file()


def test_retry_after_drop_finds_finished_prompt_in_history(tmp_path):
    fake = FakeTransport(drop=["finish"])
    rec, sleeps = run_one(tmp_path, fake)
    assert rec["status"] == "ok", rec
    assert len(fake.posted) == 1, "a prompt that finished while disconnected must not be queued again"
    assert rec["attempts"] == 2 and sleeps == [0.5]


def test_retry_after_drop_follows_still_running_prompt(tmp_path):
    fake = FakeTransport(drop=["running"])
    rec, sleeps = run_one(tmp_path, fake)
    assert rec["status"] == "ok", rec
    assert len(fake.posted) == 1 and rec["attempts"] == 2


def test_retry_after_server_restart_requeues(tmp_path):
    fake = FakeTransport(drop=["restart"], down=0)
    rec, sleeps = run_one(tmp_path, fake)
    assert rec["status"] == "ok", rec
    assert len(fake.posted) == 2 and len(fake.uploads) == 2, "lost prompt: upload + queue again"
    assert rec["prompt_id"] == fake.posted[1][0]


def test_retry_backoff_then_success(tmp_path):
    fake = FakeTransport(down=2)
    rec, sleeps = run_one(tmp_path, fake, retries=3)
    assert rec["status"] == "ok" and rec["attempts"] == 3 and sleeps == [0.5, 1.0]


def test_retries_are_bounded(tmp_path):
    fake = FakeTransport(down=True)
    rec, sleeps = run_one(tmp_path, fake, retries=3)
    assert rec["status"] == "error" and "unreachable after 4 attempt(s)" in rec["error"]
    assert sleeps == [0.5, 1.0, 2.0] and fake.connects == 4 and not fake.posted


def test_invalid_override_is_not_queued(tmp_path):
    fake = FakeTransport()
    opts, _ = fake_opts(tmp_path)
    rec = B.JobRunner(fake, opts, log=lambda m: None).run(job(id="j", overrides={"3.nope": 1}))
    assert rec["status"] == "invalid" and "has no input 'nope'" in rec["error"] and not fake.posted


def test_distribution_over_servers_and_resume(tmp_path):
    fakes = {u: FakeTransport(u, delay=0.01) for u in ("http://a", "http://b")}
    jobs = [job(id=f"j{i}", frames=2, overrides={"3.diffusion_steps": 2}) for i in range(6)]
    jobs.append(job(id="bad", overrides={"9.seed": 1}))
    opts, _ = fake_opts(tmp_path)
    data = B.run_batch(jobs, list(fakes), opts, transport_factory=fakes.__getitem__, log=lambda m: None)
    recs = data["jobs"]
    assert {recs[f"j{i}"]["status"] for i in range(6)} == {"ok"} and recs["bad"]["status"] == "invalid"
    assert all(len(f.posted) >= 1 for f in fakes.values()), "both servers got work"
    assert sum(len(f.posted) for f in fakes.values()) == 6
    assert {recs[f"j{i}"]["server"] for i in range(6)} == {"http://a", "http://b"}
    assert data["counts"] == {"ok": 6, "invalid": 1}
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["jobs"]["j0"]["status"] == "ok"

    # resume: finished jobs are skipped, a job whose outputs were deleted runs again, --force redoes all
    Path(recs["j0"]["outputs"][0]).unlink()
    again = {u: FakeTransport(u) for u in fakes}
    data2 = B.run_batch(jobs, list(again), opts, transport_factory=again.__getitem__, log=lambda m: None)
    assert sum(len(f.posted) for f in again.values()) == 1
    assert data2["jobs"]["j0"]["status"] == "ok" and not data2["jobs"]["j0"].get("skipped")
    assert all(data2["jobs"][f"j{i}"].get("skipped") for i in range(1, 6))
    opts.force = True
    third = {u: FakeTransport(u) for u in fakes}
    B.run_batch(jobs, list(third), opts, transport_factory=third.__getitem__, log=lambda m: None)
    assert sum(len(f.posted) for f in third.values()) == 6


def test_dead_server_hands_jobs_to_the_others(tmp_path):
    fakes = {"http://up": FakeTransport("http://up"), "http://down": FakeTransport("http://down", down=True)}
    jobs = [job(id=f"j{i}", frames=1, overrides={"3.diffusion_steps": 1}) for i in range(4)]
    opts, _ = fake_opts(tmp_path, retries=1)
    data = B.run_batch(jobs, list(fakes), opts, transport_factory=fakes.__getitem__, log=lambda m: None)
    assert {r["status"] for r in data["jobs"].values()} == {"ok"}
    assert {r["server"] for r in data["jobs"].values()} == {"http://up"}

    # every server down: jobs fail with a clear message instead of hanging
    dead = {"http://x": FakeTransport("http://x", down=True), "http://y": FakeTransport("http://y", down=True)}
    opts2, _ = fake_opts(tmp_path / "2", retries=0)
    data = B.run_batch(jobs, list(dead), opts2, transport_factory=dead.__getitem__, log=lambda m: None)
    assert {r["status"] for r in data["jobs"].values()} == {"error"}
    assert all("unreachable" in r["error"] or "no reachable server" in r["error"] for r in data["jobs"].values())


def test_a_job_handed_back_late_still_reaches_the_live_server(tmp_path):
    """The dead server's worker holds the only job and fails slowly; the live server's worker starts only then, finds
    the queue empty, and must wait for the hand-back instead of retiring (a race that once failed ~1 run in 13)."""
    took = threading.Event()

    class SlowDown(FakeTransport):
        def connect_ws(self):
            took.set()  # the job is taken: let the live worker start
            time.sleep(0.3)
            return super().connect_ws()

    fakes = {"http://down": SlowDown("http://down", down=True), "http://up": FakeTransport("http://up")}

    def factory(url):
        if url == "http://up":
            assert took.wait(10), "the dead server's worker never took the job"
        return fakes[url]

    opts, _ = fake_opts(tmp_path, retries=0)
    data = B.run_batch([job(id="only", frames=1)], list(fakes), opts, transport_factory=factory, log=lambda m: None)
    assert data["jobs"]["only"]["status"] == "ok" and data["jobs"]["only"]["server"] == "http://up"


def test_stop_marks_jobs_interrupted(tmp_path):
    class Interruptible(FakeTransport):
        def cancel(self, pid):
            self.interrupted = pid
            self.frames = [
                json.dumps(
                    {"type": "execution_interrupted", "data": {"prompt_id": pid, "node_id": "3", "node_type": "X"}}
                )
            ]
            self.histories[pid] = {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": []}}

    stop = threading.Event()
    fake = Interruptible(delay=0.01)
    opts, _ = fake_opts(tmp_path)
    runner = B.JobRunner(fake, opts, stop=stop, log=lambda m: None)
    threading.Timer(0.03, stop.set).start()
    rec = runner.run(job(id="j", frames=5, overrides={"3.diffusion_steps": 4}))
    assert rec["status"] == "interrupted" and fake.interrupted == rec["prompt_id"], rec
    data = B.run_batch(
        [job(id="k")],
        ["http://fake"],
        opts,
        transport_factory=lambda u: FakeTransport(u),
        stop=stop,
        log=lambda m: None,
    )
    assert data["jobs"]["k"]["status"] == "interrupted" and "stopped" in data["jobs"]["k"]["error"]


# ------------------------------------------------------------------------------------------------ hostile job files
class Recording(FakeTransport):
    """FakeTransport that keeps the bytes of every upload."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.uploaded: dict = {}

    def upload_image(self, data, name):
        self.uploaded[name] = data
        return super().upload_image(data, name)


def _run_fake(tmp_path, jobs, fake=None):
    fake = fake or Recording()
    opts, _ = fake_opts(tmp_path)
    data = B.run_batch(jobs, ["http://fake"], opts, transport_factory=lambda u: fake, log=lambda m: None)
    return data, fake


def test_a_file_that_is_not_a_picture_is_refused_and_never_uploaded(tmp_path):
    """A job's image must be a picture: a text file (here a copy of a passwd-like file, also under a .png name) is
    refused when the jobs file is read, naming the file; nothing is uploaded or queued."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\nsecret-token-123\n")
    fake_png = tmp_path / "holiday.png"
    fake_png.write_bytes(secret.read_bytes())
    f = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "a", "image": str(secret), "text": "Hi."},
        {"id": "b", "image": "holiday.png", "text": "Hi."},
        {"id": "ok", "image": str(START_PNG), "text": "Hi.", "frames": 1, "overrides": {"3.diffusion_steps": 1}},
    )
    jobs = B.load_jobs(f)
    for j, path in zip(jobs[:2], (secret, fake_png), strict=True):
        assert j.invalid == (
            f"job {j.id} (line {j.line}): image {path} is not a PNG, JPEG, WebP, BMP, GIF or TIFF picture that "
            "Pillow can read (not a picture); only such pictures are uploaded, re-encoded as PNG, so the file never "
            "leaves this machine: give the path of a picture"
        ), j.invalid
    data, fake = _run_fake(tmp_path, jobs)
    assert {k: r["status"] for k, r in data["jobs"].items()} == {"a": "invalid", "b": "invalid", "ok": "ok"}
    assert len(fake.uploaded) == 1 and len(fake.posted) == 1
    assert not any(b"secret-token-123" in d for d in fake.uploaded.values())


def test_the_start_image_is_re_encoded_as_png_before_the_upload(tmp_path):
    """Only pixels leave the machine: a JPEG with EXIF (orientation, a GPS-like comment) is uploaded as a PNG of
    its upright pixels, without the EXIF; the upload's name ends in .png."""
    src = Image.new("RGB", (40, 20), (200, 30, 30))
    src.paste((10, 200, 10), (0, 0, 10, 20))  # a green band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010E] = "GPS 48.8584N 2.2945E private"  # ImageDescription
    path = tmp_path / "photo.jpg"
    src.save(path, format="JPEG", exif=exif, quality=95)
    data, fake = _run_fake(tmp_path, [job(id="p", image=str(path), frames=1, overrides={"3.diffusion_steps": 1})])
    assert data["jobs"]["p"]["status"] == "ok", data["jobs"]["p"]
    ((name, sent),) = fake.uploaded.items()
    assert name.startswith("seedstory_batch_p_") and name.endswith(".png")
    assert sent.startswith(b"\x89PNG\r\n\x1a\n") and sent != path.read_bytes()
    assert b"private" not in sent and b"Exif" not in sent
    got = Image.open(io.BytesIO(sent))
    assert got.format == "PNG" and got.size == (20, 40), got.size  # EXIF orientation applied (as LoadImage does)
    assert got.getpixel((10, 2))[1] > 150  # the green band is now on top
    assert fake.posted[0][1]["2"]["inputs"]["image"] == name


def test_a_truncated_picture_is_refused_before_the_upload(tmp_path):
    """A JPEG cut in half passes the quick check when the jobs file is read, but not the decoding before the
    upload: the job is 'invalid' naming the file, nothing is uploaded or queued."""
    path = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    data, fake = _run_fake(tmp_path, [job(id="cut", image=str(path), frames=1)])
    rec = data["jobs"]["cut"]
    assert rec["status"] == "invalid" and rec["error"].startswith(
        f"job cut (line 1): image {path} is not a PNG, JPEG, WebP, BMP, GIF or TIFF picture that Pillow can read ("
    ), rec
    assert fake.uploaded == {} and fake.posted == []


@pytest.mark.parametrize(
    "jid,why",
    [
        ("CON", "is a device name that Windows reserves"),
        ("nul.txt", "is a device name that Windows reserves"),
        ("com1", "is a device name that Windows reserves"),
        ("LPT9", "is a device name that Windows reserves"),
        (".", "names no folder"),
        ("..", "names no folder"),
        ("summary.json", "the name of seedstory-batch's own file summary.json"),
        ("Summary.JSON", "the name of seedstory-batch's own file summary.json"),
        ("summary.json.corrupt-20250101T000000", "the name of seedstory-batch's own file summary.json"),
    ],
)
def test_reserved_job_ids_are_refused_before_queueing(tmp_path, jid, why):
    """Ids that cannot name OUT/<id>/ are refused when the jobs file is read, naming the id and the line -- and
    never with a word about filename_prefix; nothing is queued and OUT/summary.json stays a file."""
    f = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "fine", "image": str(START_PNG), "text": "Hi.", "frames": 1, "overrides": {"3.diffusion_steps": 1}},
        {"id": jid, "image": str(START_PNG), "text": "Hi."},
    )
    bad = B.load_jobs(f)[1]
    assert bad.invalid.startswith(f"job {jid} (line 2): the id {jid!r} ") and why in bad.invalid, bad.invalid
    assert bad.invalid.endswith("; choose another id") and "filename_prefix" not in bad.invalid
    data, fake = _run_fake(tmp_path, B.load_jobs(f))
    assert data["jobs"][jid]["status"] == "invalid" and data["jobs"]["fine"]["status"] == "ok"
    assert len(fake.posted) == 1 and fake.posted[0][1]["4"]["inputs"]["filename_prefix"] == "seedstory_batch/fine/story"
    assert (tmp_path / "out" / "summary.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine", "summary.json"]
    assert B.id_problem("console") is None and B.id_problem("summary") is None and B.id_problem("a.b") is None


def test_a_jobs_file_that_is_not_utf8_text_names_the_file_and_line(tmp_path, capsys):
    good = json.dumps({"id": "a", "image": str(START_PNG), "text": "Hi."}).encode()
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(good + b"\n" + json.dumps({"text": "x"}).encode().replace(b"x", b"caf\xe9") + b"\n")
    binary = tmp_path / "picture.jsonl"
    binary.write_bytes(START_PNG.read_bytes())
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(good + b"\n\n" + b'{"id": "b"\x00}\n')
    assert B.main([str(latin), "-o", str(tmp_path / "o1")]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{latin} line 2 is not UTF-8 text (invalid continuation byte at byte " in err, err
    assert "save it as UTF-8" in err and "codec" not in err
    assert B.main([str(binary), "-o", str(tmp_path / "o2")]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"seedstory-batch: {binary} " in err and ("not UTF-8 text" in err or "not a text file" in err), err
    assert B.main([str(nul), "-o", str(tmp_path / "o3")]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{nul} is not a text file (a NUL byte at line 3, byte " in err, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()
    # a UTF-8 byte-order mark (Windows editors) and CRLF line ends are fine
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n")
    assert [j.id for j in B.load_jobs(bom)] == ["a"] and B.load_jobs(bom)[0].invalid is None


SAVE_INFO = {
    "SeedStorySaveStory": {
        "input": {
            "required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}], "title": ["STRING", {}]},
            "optional": {"layout": [["storybook", "comic", "strip"], {}], "pdf": ["BOOLEAN", {"default": False}]},
        }
    }
}


def _without_page_inputs(template: dict) -> dict:
    """A copy of ``template`` whose Save Story sets neither layout nor pdf (as exported before those inputs)."""
    t = json.loads(json.dumps(template))
    for name in ("layout", "pdf"):
        t["4"]["inputs"].pop(name, None)
    return t


def test_layout_and_pdf_fields_set_the_save_story_inputs():
    j = job(layout="comic", pdf=True)
    assert j.invalid is None and (j.layout, j.pdf) == ("comic", True)
    bare = _without_page_inputs(TINY)
    p = B.build_prompt(bare, j, "x.png", object_info=SAVE_INFO)
    assert p["4"]["inputs"]["layout"] == "comic" and p["4"]["inputs"]["pdf"] is True
    p = B.build_prompt(bare, job(layout="strip"), "x.png", object_info=SAVE_INFO)
    assert p["4"]["inputs"]["layout"] == "strip" and "pdf" not in p["4"]["inputs"]
    p = B.build_prompt(bare, job(), "x.png", object_info=SAVE_INFO)
    assert "layout" not in p["4"]["inputs"] and "pdf" not in p["4"]["inputs"]  # the node's (or template's) own
    p = B.build_prompt(TINY, job(layout="storybook", pdf=False), "x.png", object_info=SAVE_INFO)
    assert p["4"]["inputs"]["layout"] == "storybook" and p["4"]["inputs"]["pdf"] is False  # the job wins
    # the new ComfyUI spelling of a choice input is read too
    combo = json.loads(json.dumps(SAVE_INFO))
    combo["SeedStorySaveStory"]["input"]["optional"]["layout"] = ["COMBO", {"options": ["storybook", "comic"]}]
    with pytest.raises(B.JobInvalid, match=r"'layout' 'strip' is not offered by node 4 \(SeedStorySaveStory\)"):
        B.build_prompt(TINY, job(layout="strip"), "x.png", object_info=combo)


def test_bad_layout_or_pdf_is_refused_before_queueing(tmp_path):
    bad = job(id="b", layout="poster", pdf="yes")
    assert "'layout' must be one of 'storybook', 'comic', 'strip', got 'poster'" in bad.invalid
    assert "'pdf' must be true or false, got 'yes'" in bad.invalid
    # a server whose Save Story has no such input (an older pack): refused with the input named, not queued
    with pytest.raises(B.JobInvalid) as e:
        B.build_prompt(_without_page_inputs(TINY), job(id="old", pdf=True), "x.png", object_info={})
    assert str(e.value).startswith("job old (line 1): the job sets 'pdf' but node 4 (SeedStorySaveStory) has no ")
    assert "update the seedstory pack on the server, or drop 'pdf'" in str(e.value)
    old = tmp_path / "old_template.json"
    old.write_text(json.dumps(_without_page_inputs(TINY)))
    data, fake = _run_fake(tmp_path, [bad, job(id="old", layout="comic", frames=1, template=str(old))])
    assert {k: r["status"] for k, r in data["jobs"].items()} == {"b": "invalid", "old": "invalid"}
    assert "has no input 'layout' on this server" in data["jobs"]["old"]["error"]
    assert fake.posted == []


def test_a_job_with_pdf_downloads_the_pdf(tmp_path):
    """Save Story lists the PDF it wrote in its output "pdf": the client downloads it next to the storybook."""

    class WithPdf(Recording):
        def object_info(self):
            return SAVE_INFO

        def _complete(self, pid):
            super()._complete(pid)
            out = self.histories[pid]["outputs"]["4"]
            if dict(self.posted)[pid]["4"]["inputs"].get("pdf"):
                out["pdf"] = [out["storybook"][0].replace("index.html", "story.pdf")]

    data, fake = _run_fake(
        tmp_path, [job(id="p", frames=1, layout="comic", pdf=True, overrides={"3.diffusion_steps": 1})], WithPdf()
    )
    rec = data["jobs"]["p"]
    assert rec["status"] == "ok" and rec["pdf"].endswith("/story.pdf"), rec
    assert Path(rec["local_pdf"]) == tmp_path / "out" / "p" / "story.pdf" and Path(rec["local_pdf"]).is_file()
    assert str(tmp_path / "out" / "p" / "story.pdf") in rec["outputs"]
    assert fake.posted[0][1]["4"]["inputs"]["layout"] == "comic" and fake.posted[0][1]["4"]["inputs"]["pdf"] is True


# ================================================================================================ real server
def cli_env() -> dict:
    """The environment for ``python -m seedstory_client.batch`` in a subprocess: this checkout first on PYTHONPATH
    (the pack is not pip-installed: the README runs it from the repository folder)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["jobs"]


FAST = {"3.diffusion_steps": 2}


@pytest.mark.comfyui
def test_cli_end_to_end_with_an_invalid_job_then_resume(comfy_server, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {
            "id": "boat",
            "image": str(START_PNG),
            "text": "A little boat leaves the harbour.",
            "frames": 2,
            "seed": 3,
            "overrides": FAST,
        },
        {"id": "empty", "image": str(START_PNG), "text": "   ", "frames": 2, "seed": 1, "overrides": FAST},
        {
            "id": "caps",
            "image": str(START_PNG),
            "text": "George woke up.",
            "captions": ["He ate.", "He played."],
            "seed": 2,
            "overrides": {"SeedStory Generate Story.diffusion_steps": 2, "SeedStory Save Story.title": "C"},
        },
        {"id": "typo", "image": str(START_PNG), "text": "Hello.", "frames": 1, "overrides": {"3.diffusion_stepz": 2}},
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "seedstory_client.batch",
        str(jobs),
        "-o",
        str(out),
        "-s",
        comfy_server.base_url,
        "--print-storybooks",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 1, proc.stderr  # some jobs invalid
    recs = _summary(out)
    assert {k: r["status"] for k, r in recs.items()} == {
        "boat": "ok",
        "empty": "invalid",
        "caps": "ok",
        "typo": "invalid",
    }, proc.stderr
    # the refused job: node_errors details, clearly reported
    empty = recs["empty"]
    assert empty["node_errors"]["3"]["class_type"] == "SeedStoryGenerateStory"
    assert "node 3 (SeedStoryGenerateStory) input 'opening_text'" in empty["error"] and "empty" in empty["error"]
    assert "node 3 (SeedStoryGenerateStory) input 'opening_text'" in proc.stderr
    assert "has no input 'diffusion_stepz'" in recs["typo"]["error"] and recs["typo"]["prompt_id"] is None
    # the good jobs: frames + storybook on disk, locally and on the server
    for jid, n_frames in (("boat", 3), ("caps", 3)):
        r = recs[jid]
        assert r["prompt_id"] and r["server"] == comfy_server.base_url and r["seconds"] > 0
        frames = sorted((out / jid).glob("frame_*.png"))
        assert len(frames) == n_frames and all(f.read_bytes().startswith(b"\x89PNG") for f in frames)
        story = json.loads((out / jid / "story.json").read_text())
        assert len(story["frames"]) == n_frames
        assert (out / jid / "index.html").is_file() and Path(r["local_storybook"]) == out / jid / "index.html"
        assert (comfy_server.output_dir / r["storybook"]).is_file()
        assert r["storybook"].startswith(f"seedstory_batch/{jid}/story_")
    caps_text = (out / "caps" / "story.txt").read_text().splitlines()
    assert caps_text[1:] == ["He ate.", "He played."]
    assert json.loads((out / "caps" / "story.json").read_text())["title"] == "C"
    assert proc.stdout.split() == [recs["boat"]["storybook"], recs["caps"]["storybook"]]

    # resume: the ok jobs are skipped, the invalid ones tried again (and still invalid)
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=cli_env())
    assert proc2.returncode == 1
    recs2 = _summary(out)
    for jid in ("boat", "caps"):
        assert recs2[jid]["skipped"] and recs2[jid]["prompt_id"] == recs[jid]["prompt_id"]
    assert "already done" in proc2.stderr
    assert recs2["empty"]["status"] == "invalid"


@pytest.mark.comfyui
def test_two_servers_then_restart_mid_job(comfy_server, tmp_path):
    second = launcher.start(comfy_server.comfy_dir, python=sys.executable, scratch_dir=tmp_path / "srv2")
    try:
        servers = [comfy_server.base_url, second.base_url]
        jobs = [job(id=f"m{i}", frames=1, seed=i, overrides=FAST) for i in range(4)]
        opts = B.Options(out_dir=tmp_path / "multi", progress=False)
        data = B.run_batch(jobs, servers, opts)
        recs = data["jobs"]
        assert {r["status"] for r in recs.values()} == {"ok"}, recs
        assert {r["server"] for r in recs.values()} == set(servers), "jobs were spread over both servers"
        for r in recs.values():
            assert len([p for p in r["outputs"] if p.endswith(".png")]) == 2

        # kill the second server while a job runs on it, restart it on the same port: the client reconnects,
        # finds the prompt gone (history is in memory) and queues it again
        # long enough (12 frames x 4 diffusion steps, several seconds on 2 idle cores) to be still running half a
        # second after it started, short enough to run again in time on a busy machine
        long = job(id="restart", frames=12, seed=1, overrides={"3.diffusion_steps": 4})
        opts = B.Options(
            out_dir=tmp_path / "restart", progress=False, retry=B.RetryPolicy(retries=10, backoff=0.5, max_backoff=8.0)
        )
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(B.run_batch([long], [second.base_url], opts)))
        runner.start()
        client = second.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not client.queue_state()["queue_running"]:
            time.sleep(0.2)
        assert client.queue_state()["queue_running"], "the job never started"
        time.sleep(0.5)
        port = second.port
        killed_log = second.log_path
        second.stop()
        ran_before = sum(1 for r in recs.values() if r["server"] == second.base_url)  # the 4-job batch's share
        assert killed_log.read_text().count("Prompt executed") == ran_before, "the job finished before the stop"
        second = launcher.start(
            comfy_server.comfy_dir, port=port, python=sys.executable, scratch_dir=tmp_path / "srv2b"
        )
        runner.join(timeout=400)
        assert not runner.is_alive()
        rec = result["jobs"]["restart"]
        assert rec["status"] == "ok", rec
        assert rec["attempts"] >= 2
        assert second.client().history(rec["prompt_id"]), "the final prompt ran on the restarted server"
        assert len(list((tmp_path / "restart" / "restart").glob("frame_*.png"))) == 13
    finally:
        second.stop()
