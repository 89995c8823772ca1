"""Issue 22, items 3-7, each case as a test: typed settings on resume, outputs that never
overwrite inputs, exports safe for str.format, --cache-dir for every cache (shard images
included, bounded), and a warm path that survives an unreadable image."""

import json
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_ipo, run_ipo_without_torch
from ipo_cli import cache
from ipo_cli.data import folders as ds
from ipo_cli.data import templates
from ipo_cli.errors import IpoError
from ipo_cli.gates import paths, typed
from ipo_cli.optimize.request import Overrides, Request, make_request
from ipo_cli.optimize.run_folder import MARKER, RUN_FORMAT


def one_line(result) -> str:
    """The command failed as a bad input must: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ---- 3. typed settings on resume ----------------------------------------------------------

def fake_run(folder: Path, image_folder: Path, settings: dict | None = None, **fields) -> Path:
    """A run folder as `ipo optimize` leaves it before its first step (config.json, marker)."""
    request = {**Request(images=image_folder).settings(), **(settings or {})}
    config = {"format": RUN_FORMAT, "request": request, "models": {}, "classnames": ["a", "b"],
              "train_classnames": ["a", "b"], "split": {"train": []}, **fields}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / MARKER).write_text(json.dumps({"ipo_run_format": RUN_FORMAT}))
    return folder


@pytest.mark.parametrize("name,value,said", [
    ("steps", 2.5, "the number 2.5, not a whole number"),
    ("shots", 2.5, "not a whole number"),
    ("candidates", 4.0, "the number 4.0, not a whole number"),
    ("history", True, "true, not a whole number"),
    ("seed", "1", "the text '1', not a whole number"),
    ("temperature", "hot", "not a number"),
    ("base_novel", 1, "not true or false"),
    ("select", ["train"], "a list, not a text"),
    ("images", 5, "not a path"),
])
def test_resume_refuses_a_setting_of_the_wrong_type_naming_it_and_the_file(tmp_path, fashion_train, name, value,
                                                                            said):
    run = fake_run(tmp_path / "run", fashion_train, {name: value})
    line = one_line(run_ipo("optimize", "--resume", run))
    assert f"'{name}'" in line and said in line and str(run / "config.json") in line


@pytest.mark.parametrize("field,value,said", [
    ("train_classnames", "abc", "the text 'abc', not a list of texts"),
    ("classnames", [1, 2], "'classnames'[0] is the whole number 1, not a text"),
    ("split", {"train": [["x.png", 1.5]]}, "'split'[\"train\"][0][1] is the number 1.5, not a whole number"),
    ("request", [], "a list, not an object"),
])
def test_every_reader_of_config_json_refuses_fields_of_the_wrong_type(tmp_path, fashion_train, field, value, said):
    run = fake_run(tmp_path / "run", fashion_train, **{field: value})
    for command in (["optimize", "--resume", run], ["report", run]):
        line = one_line(run_ipo(*command))
        assert said in line and str(run / "config.json") in line, line


def test_the_type_check_follows_the_dataclass_not_a_hand_list():
    """A field added to Request (another engineer adds strategy settings) is checked the day
    it is added: the types come from the dataclass."""

    @dataclass
    class Later(Request):
        feedback: str = "all"
        history_order: str | None = None

    typed.check_fields({"feedback": "all", "history_order": None}, Later, "config.json")
    with pytest.raises(IpoError, match=r"config.json: the setting 'feedback' is the whole number 3, not a text"):
        typed.check_fields({"feedback": 3}, Later, "config.json")
    with pytest.raises(IpoError, match="'history_order' is a list, not a text or nothing"):
        typed.check_fields({"history_order": ["a"]}, Later, "config.json")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["steps", "shots", "temperature", "base_novel", "llm", "images", "n_ctx", "seed"]),
       value=json_values)
def test_any_json_value_is_a_request_field_or_one_line(name, value):
    """Whatever config.json holds, from_dict gives a Request of the declared types or an
    IpoError naming the setting, never a TypeError later."""
    data = {"images": "imgs", name: value}
    try:
        request = Request.from_dict(data, "config.json")
    except IpoError as exc:
        assert f"'{name}'" in exc.message and "config.json" in exc.message
        return
    kinds = typed.field_types(Request)
    assert typed.conforms(getattr(request, name) if name != "images" else str(request.images), kinds[name])
    assert not (kinds[name] is int and isinstance(getattr(request, name), (bool, float)))


def test_a_huge_number_is_a_range_error_not_a_crash(tmp_path, fashion_train):
    run = fake_run(tmp_path / "run", fashion_train, {"n_ctx": 10**4000})
    line = one_line(run_ipo("optimize", "--resume", run))
    assert "--n-ctx must be a number from 256" in line and "more than 30 digits" in line


def test_a_library_caller_gets_the_range_then_the_type():
    with pytest.raises(IpoError, match=r"^--steps must be a number from 1"):
        make_request(Overrides(images=Path("x"), steps=0))
    with pytest.raises(IpoError, match="'steps' is the number 2.5, not a whole number"):
        make_request(Overrides(images=Path("x"), steps=2.5))  # type: ignore[arg-type]


# ---- 4. outputs never overwrite inputs ------------------------------------------------------

@pytest.fixture
def photos(tmp_path, fashion_train) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(fashion_train, folder)
    return folder


def tiny(config, checkpoint) -> list:
    return ["--clip", config, "--clip-weights", checkpoint]


def test_describe_refuses_an_out_that_is_one_of_its_photos(photos, tiny_config, tiny_checkpoint):
    photo = next((photos / "trouser").iterdir())
    before = photo.read_bytes()
    line = one_line(run_ipo("describe", photos, "--lmm", "clip", *tiny(tiny_config, tiny_checkpoint), "--out", photo))
    assert "lies inside" in line or "which this command reads" in line
    assert photo.read_bytes() == before


def test_eval_refuses_to_write_over_its_prompts_file_or_into_its_images(photos, tmp_path, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    args = ["eval", prompts, "--images", photos, "--classes", photos / "classes.txt", *tiny(tiny_config, tiny_checkpoint)]
    line = one_line(run_ipo(*args, "--out", prompts))
    assert f"--out {prompts} is {prompts}, which this command reads" in line
    assert json.loads(prompts.read_text()) == ["a photo of a {}."]
    line = one_line(run_ipo(*args, "--out", photos / "results.json"))
    assert "lies inside" in line and str(photos) in line and not (photos / "results.json").exists()
    line = one_line(run_ipo(*args, "--format", "clip_benchmark", "--out", str(photos / "trouser") + "/"))
    assert "lies inside" in line
    # another name for the same file (a hard link) is the same file
    other = tmp_path / "also-prompts.json"
    os.link(prompts, other)
    assert "which this command reads" in one_line(run_ipo(*args, "--out", other))
    fine = run_ipo(*args, "--out", tmp_path / "results.json")
    assert fine.returncode == 0, fine.stderr


def test_classify_export_and_optimize_refuse_their_inputs_as_out(photos, tmp_path, tiny_config, tiny_checkpoint):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    image = next((photos / "bag").iterdir())
    linked = tmp_path / "linked.png"
    os.link(image, linked)
    classify = run_ipo("classify", photos, "--prompts", prompts, "--classes", photos / "classes.txt",
                       *tiny(tiny_config, tiny_checkpoint), "--out", linked.with_suffix(".csv"))
    assert classify.returncode == 0, classify.stderr  # a new file beside the images is fine
    hard = tmp_path / "pred.csv"
    os.link(image, hard)  # a prediction file that is, by another name, an image being read
    assert "which this command reads" in one_line(
        run_ipo("classify", photos, "--prompts", prompts, "--classes", photos / "classes.txt",
                *tiny(tiny_config, tiny_checkpoint), "--out", hard))
    assert "which this command reads" in one_line(run_ipo("export", prompts, "--out", prompts))
    assert json.loads(prompts.read_text()) == ["a photo of a {}."]
    line = one_line(run_ipo("optimize", photos, "--classes", photos / "classes.txt", "--out", photos / "run",
                            "--llm-url", "http://127.0.0.1:9/v1"))
    assert "lies inside" in line and not (photos / "run").exists()


def test_the_helper_names_files_by_identity(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    paths.refuse_input_as_output(tmp_path / "out.json", [folder, folder / "a.png", None, "paper:DTD"])
    with pytest.raises(IpoError, match="lies inside"):
        paths.refuse_input_as_output(folder / "new.json", [folder])
    with pytest.raises(IpoError, match="which this command reads"):
        paths.refuse_input_as_output(folder / "a.png", [tmp_path / "in" / ".." / "in" / "a.png"])
    with pytest.raises(IpoError, match="holds"):
        paths.refuse_input_as_output(tmp_path, [folder / "a.png"], folder=True)


# ---- 5. exports safe for str.format ----------------------------------------------------------

@pytest.mark.parametrize("template,why", [
    ("a photo of a {c!r:>99999999}.", "conversion or format spec"),
    ("a {0} photo of a {c}.", "no positional argument 0"),
    ("{c.__class__.__mro__}", "index or attribute"),
    ("a {c[0]} thing", "index or attribute"),
    ("a {x} of {c}", "no value named 'x'"),
    ("a { {c}", "lone brace"),
    ("a {c:{x}}", "conversion or format spec"),
])
def test_format_fields_are_refused_on_input_by_eval_and_export(tmp_path, fashion_train, template, why):
    prompts = tmp_path / "t.json"
    prompts.write_text(json.dumps({"cars": [template]}))
    assert why in one_line(run_ipo("export", prompts))
    assert why in one_line(run_ipo("eval", prompts, "--images", fashion_train, "--classes",
                                   fashion_train / "classes.txt"))


def test_export_escapes_every_other_brace_and_round_trips(tmp_path):
    source = ["a {{curly}} photo of a {c}.", "the <CLASS> in {braces} }{", "{} with a {{0}}"]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"cars": source}))
    done = run_ipo("export", prompts, "--top", "3", "--dataset", "cars")
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)["cars"]
    assert exported == ["a {{curly}} photo of a {c}.", "the {c} in {{braces}} }}{{", "{c} with a {{0}}"]
    for original, written in zip(source, exported):
        fields = [f for _, f, _, _ in string.Formatter().parse(written) if f is not None]
        assert fields == ["c"]
        assert written.format(c="sports car") == templates.fill(original, "sports car")
    assert templates.fill(source[0], "x") == "a {curly} photo of a x."  # as CLIP_benchmark reads it
    # and read back by ipo, the export scores the same text
    back = tmp_path / "back.json"
    back.write_text(done.stdout)
    again = json.loads(run_ipo("export", back, "--top", "3", "--dataset", "cars").stdout)["cars"]
    assert again == exported
    cupl = run_ipo("export", prompts, "--top", "3", "--to", "cupl", "--classes", _classes(tmp_path, ["a {c}", "b"]))
    assert json.loads(cupl.stdout) == {c: [templates.fill(t, c) for t in source] for c in ["a {c}", "b"]}


def _classes(tmp_path, names):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(names) + "\n")
    return path


text = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(before=text, after=text, name=text)
def test_round_trip_is_exact_for_any_text(before, after, name):
    """ipo's form: any text around <CLASS>; CLIP_benchmark's str.format of the export gives
    exactly what ipo scores, and ipo reading the export back scores the same again."""
    template = before + "<CLASS>" + after
    if templates.placeholder_count(template) != 1:
        with pytest.raises(IpoError):
            templates.check_template(template)
        return
    templates.check_template(template)
    exported = templates.str_format(template)
    assert exported.format(c=name) == templates.fill(template, name) == before + name + after
    assert templates.check_template(exported) == exported
    assert templates.fill(exported, name) == templates.fill(template, name)
    assert templates.str_format(exported) == exported
    # the str.format form itself: literal braces escaped, one {c}
    escaped = before.replace("{", "{{").replace("}", "}}") + "{c}" + after.replace("{", "{{").replace("}", "}}")
    if "<CLASS>" not in escaped:
        assert templates.fill(templates.check_template(escaped), name) == escaped.format(c=name)


@settings(max_examples=300, deadline=None)
@given(template=st.text(st.sampled_from("{}c!r:0.[]<CLASS> x"), max_size=14), name=text)
def test_an_accepted_template_fills_as_str_format_does(template, name):
    """Any template ipo accepts in the str.format form gives what str.format would."""
    try:
        templates.check_template(template)
    except IpoError:
        return
    if "<CLASS>" in template:
        return
    expected = template.format(name, c=name)
    assert templates.fill(template, name) == expected
    assert templates.str_format(template).format(c=name) == expected


# ---- 6. --cache-dir for every cache ----------------------------------------------------------

def test_shard_images_follow_cache_dir_and_cache_info_and_clear_know_them(tmp_path, fashion_train, tiny_config,
                                                                         tiny_checkpoint, private_dirs):
    from test_shards import build_shards

    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "wds_fashion", data)
    mine = tmp_path / "mine"
    default = private_dirs / "cache"  # IPO_CACHE_DIR of every test
    done = run_ipo("eval", folder / "zeroshot_classification_templates.txt", "--images", folder,
                   *tiny(tiny_config, tiny_checkpoint), "--cache-dir", mine, "--json")
    assert done.returncode == 0, done.stderr
    stored = sorted((mine / "shard-images").rglob("*.*"))
    assert len(stored) == len({p.read_bytes() for p in data.paths}) and not (default / "shard-images").exists()
    described = run_ipo("describe", folder, "--lmm", "clip", *tiny(tiny_config, tiny_checkpoint), "--cache-dir", mine,
                        "--json")
    assert described.returncode == 0, described.stderr
    assert not (default / "shard-images").exists() and not (default / "embeddings").exists()
    info = json.loads(run_ipo("cache", "info", "--cache-dir", mine, "--json").stdout)
    shard_row = next(s for s in info["stores"] if s["name"] == "shard-images")
    assert shard_row["entries"] == len(stored) and shard_row["bytes"] == sum(p.stat().st_size for p in stored)
    (mine / "shard-images" / "notes.txt").write_text("mine")
    assert "did not make" in one_line(run_ipo("cache", "clear", "--cache-dir", mine))
    assert all(p.exists() for p in stored)
    (mine / "shard-images" / "notes.txt").unlink()
    cleared = run_ipo("cache", "clear", "--cache-dir", mine)
    assert cleared.returncode == 0 and not (mine / "shard-images").exists()


def test_third_party_caches_follow_the_command_and_the_users_choice_stays(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users-own"))
    cache.keep_third_party_caches_inside(cache.cache_root())  # what the CLI does at start
    with cache.using_root(tmp_path / "chosen") as root:
        assert root == tmp_path / "chosen" and cache.cache_root() == root
        assert os.environ["MPLCONFIGDIR"] == str(root / "matplotlib")
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users-own")
        assert cache.ShardImages().path == root / "shard-images"
    assert cache.cache_root() != tmp_path / "chosen"


def test_a_fresh_process_points_matplotlib_under_cache_dir(tmp_path):
    """As the CLI runs: the default first (cli/errors.py), then the command's --cache-dir
    (cli/app.py), in a process without MPLCONFIGDIR set."""
    import subprocess
    import sys

    probe = ("import os, sys\n"
             "from ipo_cli import cache\n"
             "from ipo_cli.cli import app\n"
             "cache.keep_third_party_caches_inside(cache.cache_root())\n"
             "def command(cache_dir=None):\n"
             "    print(os.environ['MPLCONFIGDIR'], cache.ShardImages().path)\n"
             "app._with_cache_dir(command)(cache_dir=sys.argv[1])\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "c")], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "c" / "matplotlib"), str(tmp_path / "c" / "shard-images")]


def test_shard_images_are_bounded_in_total(tmp_path):
    images = cache.ShardImages(tmp_path, limit=2500)
    old = [images.put(bytes([i]) * 1000, "png") for i in range(2)]
    os.utime(old[0], (1, 1))  # the least recently used
    later = cache.ShardImages(tmp_path, limit=2500)  # another command
    assert later.put(bytes([1]) * 1000, "png") == old[1]  # it uses one of them (kept)
    new = later.put(b"n" * 1000, "png")  # over the limit: the least recently used, unused one goes
    assert new.is_file() and not old[0].exists() and old[1].exists()
    assert later.usage() == (2, 2000)
    with pytest.raises(IpoError, match="need more than the 0 MB"):
        later.put(b"m" * 1000, "png")  # both are used by this command: never removed
    assert new.is_file() and old[1].is_file() and cache.ShardImages(tmp_path).usage() == (2, 2000)


# ---- 7. the warm path survives unreadable images -----------------------------------------------

def test_a_warm_eval_skips_a_truncated_image_without_torch(photos, tmp_path, tiny_config, tiny_checkpoint):
    bad = sorted((photos / "coat").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["a photo of a {}."]))
    args = ["eval", prompts, "--images", photos, "--classes", photos / "classes.txt",
            *tiny(tiny_config, tiny_checkpoint), "--json"]
    cold = run_ipo(*args)
    assert cold.returncode == 0, cold.stderr
    cold_json = json.loads(cold.stdout)
    assert cold_json["cache"]["model_loaded"] is True and [s["path"] for s in cold_json["skipped"]] == [str(bad)]
    warm = run_ipo_without_torch(*[str(a) for a in args])
    assert warm.returncode == 0, warm.stderr
    warm_json = json.loads(warm.stdout)
    assert warm_json["cache"] == {"images_computed": 0, "images_cached": 59, "model_loaded": False}
    assert warm_json["skipped"] == cold_json["skipped"] and warm_json["results"] == cold_json["results"]
    assert f"skipped unreadable image {bad}" in warm.stderr
    # the same bytes elsewhere are known unreadable too, named by their own path
    twin = photos / "coat" / "twin.png"
    shutil.copy(bad, twin)
    warm = run_ipo_without_torch(*[str(a) for a in args])
    assert warm.returncode == 0, warm.stderr
    assert sorted(s["path"] for s in json.loads(warm.stdout)["skipped"]) == sorted([str(bad), str(twin)])
    twin.unlink()
    # changed bytes are checked again (by the model)
    bad.write_bytes(bad.read_bytes()[:-10])
    again = run_ipo(*args)
    assert again.returncode == 0 and json.loads(again.stdout)["cache"]["model_loaded"] is True
