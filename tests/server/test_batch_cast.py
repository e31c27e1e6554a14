"""seedstory-batch's ``cast`` job field: parsing and its refusals, the Story Cast node and LoadImage nodes it adds to
the prompt, the uploads (fake transport), and one cast job end to end on a real server (``comfyui`` marker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seedstory_client import batch as B
from seedstory_core import cast as core_cast
from tests.server.test_batch import Recording, _run_fake, _summary, cli_env, write_jobs
from tests.support.pack_loader import load_pack

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "workflows" / "assets"
START_PNG = ASSETS / "seedstory_start.png"
MAX_PNG, ZOE_PNG = ASSETS / "seedstory_cast_max.png", ASSETS / "seedstory_cast_zoe.png"
TINY = B.load_template(B.DEFAULT_TEMPLATE_DIR / B.DEFAULT_TEMPLATE)
CAST_TEMPLATE = B.load_template(B.DEFAULT_TEMPLATE_DIR / "seedstory_cast_sheet.json")
CAST = [{"name": "Max", "image": str(MAX_PNG)}, {"name": " Zoe ", "image": str(ZOE_PNG)}]


def cast_job(cast=CAST, **kw) -> B.Job:
    return B.parse_job(
        {"id": "c", "image": str(START_PNG), "text": "Max and Zoe are at the beach.", "cast": cast, **kw}, 4, REPO_ROOT
    )


def object_info() -> dict:
    """/object_info of our nodes (as the server lists them) plus Load Image."""
    pack = load_pack()
    info = {
        k: {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES)} for k, cls in pack.NODE_CLASS_MAPPINGS.items()
    }
    info["LoadImage"] = {"input": {"required": {"image": [[], {}]}}, "output": ["IMAGE", "MASK"]}
    return info


def test_the_client_keeps_the_cast_rules_of_the_core():
    assert (B.MAX_CAST, B.jobs.MAX_NAME_CHARS) == (core_cast.MAX_CAST, core_cast.MAX_NAME_CHARS)
    for bad in ("a:b", "a<b", "a>b", "a\nb"):
        with pytest.raises(ValueError):
            core_cast.check_cast_names([bad])
        assert "'cast'[1].name" in cast_job([{"name": bad, "image": str(MAX_PNG)}]).invalid


def test_a_cast_is_parsed_with_paths_relative_to_the_jobs_file(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "max.png").write_bytes(MAX_PNG.read_bytes())
    f = write_jobs(
        tmp_path / "jobs.jsonl",
        {"id": "a", "image": str(START_PNG), "text": "Hi.", "cast": [{"name": "Max", "image": "pics/max.png"}]},
        {"id": "b", "image": str(START_PNG), "text": "Hi.", "cast": None},
    )
    a, b = B.load_jobs(f)
    assert a.invalid is None and a.cast == [B.CastMember("Max", tmp_path / "pics" / "max.png")]
    assert b.invalid is None and b.cast is None
    job = cast_job()
    assert job.invalid is None and [m.name for m in job.cast] == ["Max", "Zoe"]
    assert B.read_cast_images(job)[0].startswith(b"\x89PNG")


def test_bad_cast_entries_are_refused_naming_the_job_and_the_field(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    pic = str(MAX_PNG)
    cases = [
        ({"name": "Max", "image": pic}, '\'cast\' must be a non-empty list of {"name": ..., "image": ...} objects'),
        ([], "'cast' must be a non-empty list"),
        ([{"name": f"C{i}", "image": pic} for i in range(6)], "'cast' holds at most 5 characters, got 6"),
        (["Max"], "'cast'[1] must be an object"),
        ([{"image": pic}], "'cast'[1].name must be the character's name (a non-empty string), got None"),
        (
            [{"name": "Max", "image": pic}, {"name": "Zoe: the hero", "image": pic}],
            "'cast'[2].name 'Zoe: the hero' must",
        ),
        ([{"name": "Max", "image": pic}, {"name": "Max", "image": pic}], "'cast' names must be distinct; ['Max']"),
        ([{"name": "Max"}], "'cast'[1].image (path to the character's picture) is required"),
        ([{"name": "Max", "image": "nowhere.png"}], "'cast'[1].image 'nowhere.png' not found (looked at "),
        ([{"name": "Max", "image": str(text)}], f"'cast'[1].image {text} is not a PNG, JPEG, WebP, BMP, GIF or TIFF"),
        ([{"name": "Max", "image": pic, "look": "red"}], "'cast'[1] has unknown field(s) ['look']"),
    ]
    for cast, message in cases:
        job = cast_job(cast)
        assert job.invalid is not None and job.invalid.startswith("job c (line 4): "), (cast, job.invalid)
        assert message in job.invalid, (message, job.invalid)
        assert job.cast is None
    # refused before anything is uploaded or queued
    data, fake = _run_fake(tmp_path, [cast_job([{"name": "Max"}])])
    assert data["jobs"]["c"]["status"] == "invalid" and fake.posted == [] and fake.uploaded == {}


def test_a_cast_adds_load_image_nodes_and_a_story_cast_node_wired_to_generate_story():
    info = object_info()
    p = B.build_prompt(TINY, cast_job(), "start.png", object_info=info, cast_names=["m.png", "z.png"])
    assert set(p) - set(TINY) == {"5", "6", "7"}  # after the template's ids
    assert p["5"] == {"class_type": "LoadImage", "inputs": {"image": "m.png"}, "_meta": {"title": "Cast: Max"}}
    assert p["6"]["inputs"] == {"image": "z.png"} and p["2"]["inputs"]["image"] == "start.png"
    cast = p["7"]
    assert cast["class_type"] == "SeedStoryStoryCast" and p["3"]["inputs"]["cast"] == ["7", 0]
    assert cast["inputs"] == {
        "visual_tokenizer": p["3"]["inputs"]["visual_tokenizer"],
        "resize_mode": "squash",
        "image_1": ["5", 0],
        "name_1": "Max",
        "image_2": ["6", 0],
        "name_2": "Zoe",
        "name_3": "",
        "name_4": "",
        "name_5": "",
    }
    assert B.start_image_loads(p) == ["2"] and B.cast_image_loads(p) == ["5", "6"]
    # every input is one the node has, every required one is given, every link has the right type
    for nid, node in p.items():
        spec = info[node["class_type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(known) and set(spec.get("required", {})) <= set(node["inputs"]), nid
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                assert info[p[value[0]]["class_type"]]["output"][value[1]] == known[name][0], (nid, name)
    # without /object_info the names default to the files' names; an older pack is refused with what to do
    assert B.build_prompt(TINY, cast_job(), "s.png")["5"]["inputs"]["image"] == "seedstory_cast_max.png"
    old = {k: v for k, v in info.items() if k != "SeedStoryStoryCast"}
    with pytest.raises(
        B.JobInvalid, match=r"job c \(line 4\): 'cast' needs the SeedStoryStoryCast node .* drop 'cast'"
    ):
        B.build_prompt(TINY, cast_job(), "s.png", object_info=old)


def test_the_cast_sheet_template_keeps_its_pictures_or_takes_the_jobs_cast():
    # without a job cast: the start image goes only into the start picture's Load Image
    p = B.build_prompt(CAST_TEMPLATE, cast_job(cast=None), "start.png")
    assert p["2"]["inputs"]["image"] == "start.png"
    assert [p[k]["inputs"]["image"] for k in ("7", "8")] == ["seedstory_cast_max.png", "seedstory_cast_zoe.png"]
    B.set_images(p, "up_start.png")
    assert p["2"]["inputs"]["image"] == "up_start.png" and p["7"]["inputs"]["image"] == "seedstory_cast_max.png"
    # with one: the template's Story Cast and its pictures are replaced
    one = cast_job(cast=[{"name": "Ben", "image": str(ZOE_PNG)}])
    p = B.build_prompt(CAST_TEMPLATE, one, "start.png", cast_names=["ben.png"])
    assert set(p) == {"1", "2", "3", "4", "5", "6"} and p["3"]["inputs"]["cast"] == ["6", 0]  # 7, 8: gone
    assert p["5"]["inputs"]["image"] == "ben.png" and p["6"]["inputs"]["name_1"] == "Ben"
    B.set_images(p, "up_start.png", ["up_ben.png"])
    assert p["2"]["inputs"]["image"] == "up_start.png" and p["5"]["inputs"]["image"] == "up_ben.png"


def test_the_cast_pictures_are_uploaded_re_encoded_with_the_start_image(tmp_path):
    data, fake = _run_fake(tmp_path, [cast_job(frames=1, overrides={"3.diffusion_steps": 1})], Recording())
    assert data["jobs"]["c"]["status"] == "ok", data["jobs"]["c"]
    names = list(fake.uploaded)
    assert len(names) == 3 and names[0].startswith("seedstory_batch_c_") and "_cast1_" in names[1]
    assert "_cast2_" in names[2] and all(fake.uploaded[n].startswith(b"\x89PNG") for n in names)
    prompt = fake.posted[0][1]
    assert [prompt[k]["inputs"]["image"] for k in B.cast_image_loads(prompt)] == names[1:]
    assert [prompt[k]["inputs"]["image"] for k in B.start_image_loads(prompt)] == names[:1]


@pytest.mark.comfyui
def test_a_cast_job_runs_on_a_real_server(comfy_server, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {
            "id": "cast",
            "image": str(START_PNG),
            "text": "Max and Zoe are at the beach.",
            "frames": 1,
            "cast": [{"name": "Max", "image": str(MAX_PNG)}, {"name": "Zoe", "image": str(ZOE_PNG)}],
            "overrides": {"3.diffusion_steps": 1, "3.consistency_retry": 1},
        },
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "seedstory_client.batch", str(jobs), "-o", str(out), "-s", comfy_server.base_url]
    proc = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, timeout=240, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _summary(out)["cast"]["status"] == "ok"
    sent = json.loads((out / "cast" / "prompt.json").read_text())
    sent = sent.get("prompt", sent)
    cast = [v for v in sent.values() if v["class_type"] == "SeedStoryStoryCast"]
    assert len(cast) == 1 and (cast[0]["inputs"]["name_1"], cast[0]["inputs"]["name_2"]) == ("Max", "Zoe")
    assert len(sorted((out / "cast").glob("frame_*.png"))) == 2
