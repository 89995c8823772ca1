"""ipo as a hostile user meets it: bad files, damaged state, odd text and faults, across
every command. Each case asserts the documented exit code (2 for a user error, 0 where the
input is legitimate however odd), exactly one line on stderr for an error, no traceback,
and that nothing already computed was lost. No case may reach the catch-all "unexpected"
message: that one is kept only for bugs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_ipo
from servers import FakeChatServer, FakeOpenAI

KEY = "sk-hostile-0123456789"


def user_error(result, needle: str = "", code: int = 2) -> None:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert needle in result.stderr, (needle, result.stderr)


def fine(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr


@pytest.fixture
def small(tmp_path, fashion_train) -> Path:
    """Three real Fashion-MNIST classes, two images each, with classes.txt."""
    root = tmp_path / "small"
    names = [n for n in (fashion_train / "classes.txt").read_text().splitlines() if n.strip()][:3]
    for name in names:
        src = next(d for d in fashion_train.iterdir() if d.is_dir() and d.name.lower() == name.lower())
        shutil.copytree(src, root / src.name)
        for extra in sorted((root / src.name).iterdir())[2:]:
            extra.unlink()
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture
def clip(tiny_config, tiny_checkpoint):
    return ["--clip", str(tiny_config), "--clip-weights", str(tiny_checkpoint)]


def prompts(tmp_path, data, name="prompts.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def evaluate(small, tmp_path, clip, *extra, data=("a photo of a {}.",)):
    return run_ipo("eval", prompts(tmp_path, list(data)), "--images", small, "--classes", small / "classes.txt",
                   *clip, *extra)


def cache_entries(store: str = "embeddings", prefix: str = "img:") -> int:
    """Cached image embeddings (or other entries by key prefix)."""
    db = Path(os.environ["IPO_CACHE_DIR"]) / store / "cache.db"
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from Cache where key like ?", (prefix + "%",)).fetchone()[0]


# ---- 1. text from outside is printed as it is ------------------------------------------
@pytest.mark.parametrize("template", ["a [/] photo of a {}.", "[bold]a photo of a {}[/bold]",
                                      "[link=http://x]a {}[/link]"])
def test_markup_in_templates_prints_literally(small, tmp_path, clip, template):
    result = evaluate(small, tmp_path, clip, data=(template,))
    fine(result)
    assert template in result.stdout


def test_markup_in_the_baseline_and_image_path(small, tmp_path, clip):
    odd = tmp_path / "imgs [/] [bold]"
    shutil.copytree(small, odd)
    result = run_ipo("eval", prompts(tmp_path, ["a photo of a {}."]), "--images", odd, "--classes",
                     odd / "classes.txt", "--baseline", "[/]a {} [red]", *clip)
    fine(result)
    assert "[/]a {} [red]" in result.stdout or "[/]a" in result.stdout


def test_a_bracketed_name_in_an_error_is_kept(small, tmp_path):
    (tmp_path / "classes.txt").write_text("[airplane]\nshirt\n")
    result = run_ipo("eval", prompts(tmp_path, ["a {}"]), "--images", small, "--classes", tmp_path / "classes.txt")
    user_error(result, "[airplane]")


def test_markup_in_a_caption_prints_literally(small):
    with FakeChatServer(lambda p: "[/] a [bold]grey[/bold] shape [link=x]") as server:
        result = run_ipo("describe", small, "--lmm-url", server.url + "/v1")
    fine(result)
    assert "[/] a [bold]grey[/bold] shape [link=x]" in result.stdout


def test_markup_in_an_llm_prompt_survives_the_run_and_eval(small, tmp_path, clip):
    out = tmp_path / "run"
    with FakeOpenAI(key=KEY, reply=lambda p: "<INS>a [/] [bold] photo of a <CLASS>.</INS>") as api:
        result = run_ipo("optimize", small, "--classes", small / "classes.txt", "--shots", "1", "--steps", "1",
                         "--candidates", "2", "--lmm", "none", "--llm-url", api.url + "/v1", *clip, "--out", out,
                         env={"IPO_API_KEY": KEY})
    fine(result)
    evaluated = run_ipo("eval", out / "prompts.json", "--images", small, "--classes", small / "classes.txt", *clip)
    fine(evaluated)
    assert "a [/] [bold] photo of a" in evaluated.stdout


def test_a_model_name_with_markup_is_refused_and_list_still_works(smollm):
    user_error(run_ipo("models", "add", "x[/]y", "--file", smollm, "--kind", "llm"), "x[/]y")
    fine(run_ipo("models", "list"))


# ---- 2. the cache cannot run code and heals ---------------------------------------------
def test_a_planted_pickle_runs_nothing(small, tmp_path, clip):
    import diskcache

    fine(evaluate(small, tmp_path, clip))
    marker = tmp_path / "pwned"
    planted = diskcache.Cache(str(Path(os.environ["IPO_CACHE_DIR"]) / "embeddings"))
    keys = list(planted.iterkeys())
    assert keys

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for key in keys:
        planted.set(key, Evil())  # diskcache stores this in pickle mode
    planted.close()
    result = evaluate(small, tmp_path, clip)
    fine(result)
    assert not marker.exists()
    assert "pickle mode" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert cache_entries(prefix="") == len(keys)  # the poisoned rows were replaced by recomputed ones


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_cache_is_moved_aside_and_rebuilt(small, tmp_path, clip, damage):
    fine(evaluate(small, tmp_path, clip))
    db = Path(os.environ["IPO_CACHE_DIR"]) / "embeddings" / "cache.db"
    if damage == "truncate":
        db.write_bytes(db.read_bytes()[:100])
    else:
        db.write_bytes(b"this is not a database" * 100)
    result = evaluate(small, tmp_path, clip)
    fine(result)
    assert "damaged" in result.stderr and "moved it to" in result.stderr
    assert list(Path(os.environ["IPO_CACHE_DIR"]).glob("embeddings.damaged-*"))


def test_cache_clear_and_info_work_on_a_damaged_cache(small, tmp_path, clip):
    fine(evaluate(small, tmp_path, clip))
    db = Path(os.environ["IPO_CACHE_DIR"]) / "captions" / "cache.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"\0garbage" * 512)
    fine(run_ipo("cache", "info"))
    fine(run_ipo("cache", "clear"))
    info = json.loads(run_ipo("cache", "info", "--json").stdout)
    assert all(s["entries"] == 0 for s in info["stores"])


def test_a_cache_path_that_is_a_file(small, tmp_path, clip):
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    result = run_ipo("eval", prompts(tmp_path, ["a {}"]), "--images", small, "--classes", small / "classes.txt",
                     *clip, "--cache-dir", blocker / "sub")
    user_error(result, "is a file")


def test_cached_embeddings_of_the_wrong_length_are_recomputed(small, tmp_path, clip):
    import numpy as np

    from ipo_cli import cache

    fine(evaluate(small, tmp_path, clip))
    store = cache.Store(Path(os.environ["IPO_CACHE_DIR"]), "embeddings")
    for key in list(store._cache.iterkeys()):
        store.set_array(key, np.zeros(7, np.float16))
    store.close()
    result = evaluate(small, tmp_path, clip, "--json")
    fine(result)
    assert json.loads(result.stdout)["cache"]["images_computed"] == 6


# ---- 3. malformed files are one line naming the file -------------------------------------
def split_case(tmp_path, small, data, raw: bytes | None = None):
    path = tmp_path / "split.json"
    path.write_bytes(raw if raw is not None else json.dumps(data).encode())
    return run_ipo("eval", prompts(tmp_path, ["a {}"]), "--images", small, "--split", path, "--split-part", "test")


SPLITS = {
    "test-null": ({"train": [["a.png", 0, "a"]], "val": [], "test": None}, "no 'test' part"),
    "int-path": ({"test": [[5, 0, "a"]]}, "malformed entry 0"),
    "null-path": ({"test": [[None, 0, "a"]]}, "malformed entry 0"),
    "bool-label": ({"test": [["x.png", True, "a"]]}, "malformed entry 0"),
    "part-number": ({"test": 5}, "not a list"),
    "list": ([1, 2], "no 'test' part"),
    "gap-labels": ({"test": [["x.png", 1, "a"]]}, "0..n-1"),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_malformed_split_files(tmp_path, small, case):
    data, needle = SPLITS[case]
    user_error(split_case(tmp_path, small, data), needle)


@pytest.mark.parametrize("entry", ["../../../../etc/passwd", "/etc/passwd"])
def test_split_entries_outside_the_root_are_refused(tmp_path, small, entry, clip):
    result = split_case(tmp_path, small, {"test": [[entry, 0, "a"]]})
    user_error(result, "outside the image root")


def test_split_not_json_and_not_utf8(tmp_path, small):
    user_error(split_case(tmp_path, small, None, b"{not json"), "not valid JSON")
    user_error(split_case(tmp_path, small, None, b'{"test": [["\xff\xfe.png", 0, "a"]]}'), "not UTF-8")


@pytest.mark.parametrize("raw, needle", [(b"shirt\n\xff\xfeboot\n", "not UTF-8"), (b"# only a comment\n", "names no class"),
                                         (b"shirt\nShirt\n", "twice")])
def test_bad_classes_files(tmp_path, small, raw, needle):
    path = tmp_path / "classes.txt"
    path.write_bytes(raw)
    user_error(run_ipo("eval", prompts(tmp_path, ["a {}"]), "--images", small, "--classes", path), needle)


@pytest.mark.parametrize("data, needle", [
    ([1, 2], "list of template strings"), ([], "no templates"), (["no placeholder"], "placeholder"),
    ({"schema": "ipo.prompts/v9", "prompts": []}, "ipo.prompts/v9"), ({"cifar10": {"cat": 5}}, "non-empty list"),
    ("just a string", "holds no templates"),
])
def test_bad_prompt_files(tmp_path, small, data, needle):
    user_error(run_ipo("eval", prompts(tmp_path, data), "--images", small, "--classes", small / "classes.txt"), needle)


def test_prompt_file_not_utf8(tmp_path, small):
    path = tmp_path / "p.json"
    path.write_bytes(b'["a \xff {}"]')
    user_error(run_ipo("eval", path, "--images", small, "--classes", small / "classes.txt"), "is not UTF-8 (byte 4")


@pytest.mark.parametrize("content, needle", [
    ("[]", "corrupt"), ('{"models": {"m": {"kind": "llm", "files": {}}}}', "no model file record"),
    (b'{"models": {"\xff": 1}}', "not UTF-8 (byte 13"), ('{"models": []}', "corrupt"),
])
def test_damaged_manifest(content, needle):
    from ipo_cli.store import local

    path = local.models_dir() / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    user_error(run_ipo("models", "list"), needle)
    user_error(run_ipo("models", "rm", "m"), "manifest")


@pytest.mark.parametrize("entry, needle", [
    ({"name": "../evil", "kind": "llm"}, "plain model name"), ({"name": "x", "kind": "tts"}, "'kind'"),
    ({"name": "x", "kind": "llm", "source": {"repo": "a/b", "file": "../../x.gguf"}}, "source.file"),
    ({"name": "x", "kind": "llm", "source": {"repo": "a/b", "file": "m.gguf"}, "files": {"model": {"size": 1}}}, "'files'"),
])
def test_malformed_catalogue_entries(tmp_path, entry, needle):
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "x.json").write_text(json.dumps({"note": "n", "license": "l", **entry}))
    user_error(run_ipo("models", "list", env={"IPO_CATALOGUE_DIR": str(folder)}), needle)


@pytest.mark.parametrize("content", [b"5", b"[1]", b'{"embed_dim": "x"}', b"\xff\xfe"])
def test_clip_configs_that_are_not_configs(tmp_path, small, content):
    config = tmp_path / "model.json"
    config.write_bytes(content)
    result = run_ipo("eval", prompts(tmp_path, ["a {}"]), "--images", small, "--classes", small / "classes.txt",
                     "--clip", config)
    user_error(result, "not an open_clip model config")


# ---- 4. runs: nothing deleted that ipo did not make; settings that cannot mean anything ----
def optimize(small, clip, out, *extra, url=None, env=None):
    args = ["optimize", small, "--classes", small / "classes.txt", "--shots", "1", "--steps", "1", "--candidates",
            "2", "--lmm", "none", *clip, "--out", out, "--json", *extra]
    if url:
        args += ["--llm-url", url]
    return run_ipo(*args, env={"IPO_API_KEY": KEY, **(env or {})})


def test_force_never_deletes_a_folder_ipo_did_not_make(small, tmp_path, clip):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "README.md").write_text("mine")
    user_error(optimize(small, clip, project, "--force", url="http://127.0.0.1:9/v1"), "ipo did not create")
    assert (project / "README.md").read_text() == "mine" and (project / "src").is_dir()


@pytest.mark.parametrize("flag, value, needle", [
    ("--temperature", "nan", "--temperature"), ("--temperature", "inf", "--temperature"),
    ("--temperature", "-1", "--temperature"), ("--n-ctx", "0", "--n-ctx"), ("--seed", "-5", "--seed"),
])
def test_numbers_that_cannot_mean_anything(small, tmp_path, clip, flag, value, needle):
    user_error(optimize(small, clip, tmp_path / "run", flag, value, url="http://127.0.0.1:9/v1"), needle)
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_and_resume_elsewhere(small, tmp_path, clip):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with FakeOpenAI(key=KEY) as api:
        user_error(optimize(small, clip, blocker, url=api.url + "/v1", env={}), "is a file")
        out = tmp_path / "run"
        fine(optimize(small, clip, out, url=api.url + "/v1"))
        result = run_ipo("optimize", "--resume", out, "--out", tmp_path / "elsewhere")
    user_error(result, "--resume")
    assert (out / "prompts.json").exists()


def test_eval_shots_zero_and_bad_out(small, tmp_path, clip):
    user_error(evaluate(small, tmp_path, clip, "--shots", "0"), "--shots")
    (tmp_path / "results").mkdir()
    user_error(evaluate(small, tmp_path, clip, "--out", tmp_path / "results"), "is a folder")
    assert cache_entries() == 0  # refused before anything was computed


def test_eval_refuses_templates_over_77_tokens_unless_truncating(small, tmp_path, clip):
    long = "a " * 90 + "photo of a {}."
    user_error(evaluate(small, tmp_path, clip, data=(long,)), "more than the 77 CLIP reads")
    assert cache_entries() == 0
    result = evaluate(small, tmp_path, clip, "--truncate-long", data=(long,))
    fine(result)
    assert "is cut at 77" in result.stderr


def test_per_class_prompts_missing_a_class_fail_before_embedding(small, tmp_path, clip):
    data = {"cupl": {"t-shirt/top": ["a soft top"]}}
    result = run_ipo("eval", prompts(tmp_path, data), "--images", small, "--classes", small / "classes.txt", *clip)
    user_error(result, "no sentences for")
    assert cache_entries() == 0


def test_a_second_writer_is_refused_with_the_first_ones_pid(small, tmp_path, clip):
    with FakeOpenAI(key=KEY) as api:
        out = tmp_path / "run"
        fine(optimize(small, clip, out, url=api.url + "/v1"))
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; from ipo_cli.optimize.run_folder import RunFolder; f, _ = RunFolder.open(sys.argv[1], lock=True); "
            "print('held', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        try:
            result = run_ipo("optimize", "--resume", out, env={"IPO_API_KEY": KEY})
            forced = optimize(small, clip, out, "--force", url=api.url + "/v1")
        finally:
            holder.kill()
            holder.wait()
    user_error(result, f"pid {holder.pid}")
    user_error(forced, f"pid {holder.pid}")
    assert (out / "prompts.json").exists()  # --force did not delete a run in use


def test_resume_refuses_when_a_training_image_is_gone(small, tmp_path, clip):
    with FakeOpenAI(key=KEY) as api:
        out = tmp_path / "run"
        fine(optimize(small, clip, out, url=api.url + "/v1"))
        config = json.loads((out / "config.json").read_text())
        gone = Path(config["split"]["train"][0][0])
        gone.unlink()
        history = (out / "history.jsonl").read_bytes()
        result = run_ipo("optimize", "--resume", out, env={"IPO_API_KEY": KEY})
    user_error(result, gone.name)
    assert (out / "history.jsonl").read_bytes() == history


@pytest.mark.parametrize("damage, needle", [
    ("config-list", "corrupt"), ("record-missing", "without 'valid'"), ("middle-not-utf8", "corrupt at line 1"),
    ("record-string", "not a record"),
])
def test_damaged_run_folders(small, tmp_path, clip, damage, needle):
    with FakeOpenAI(key=KEY) as api:
        out = tmp_path / "run"
        fine(optimize(small, clip, out, url=api.url + "/v1"))
    # the server is gone: the damage must be reported before anything reaches for it
    history = out / "history.jsonl"
    lines = history.read_bytes().splitlines(keepends=True)
    if damage == "config-list":
        (out / "config.json").write_text("[1, 2]")
    elif damage == "record-missing":
        record = json.loads(lines[0])
        del record["valid"]
        history.write_bytes(json.dumps(record).encode() + b"\n" + b"".join(lines[1:]))
    elif damage == "middle-not-utf8":
        history.write_bytes(b"\xff\xfe{}\n" + b"".join(lines))
    elif damage == "record-string":
        history.write_bytes(b'"hello"\n' + b"".join(lines))
    user_error(run_ipo("optimize", "--resume", out, env={"IPO_API_KEY": KEY}), needle)


def test_a_torn_tail_inside_a_utf8_character_is_dropped_on_resume(small, tmp_path, clip):
    with FakeOpenAI(key=KEY) as api:
        out = tmp_path / "run"
        fine(optimize(small, clip, out, url=api.url + "/v1"))
        history = out / "history.jsonl"
        before = history.read_bytes()
        history.write_bytes(before + '{"type": "candidate", "raw": "caf\u00e9'.encode()[:-1])  # cut inside é
        result = run_ipo("optimize", "--resume", out, env={"IPO_API_KEY": KEY}, )
    fine(result)
    assert history.read_bytes().startswith(before)


def test_sigterm_saves_the_run_and_exits_143(small, tmp_path, clip):
    out = tmp_path / "run"
    with FakeOpenAI(key=KEY, latency=0.4) as api:
        proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", "optimize", str(small), "--classes",
                                 str(small / "classes.txt"), "--shots", "1", "--steps", "30", "--candidates", "2",
                                 "--patience", "30", "--lmm", "none", *map(str, clip), "--out", str(out),
                                 "--llm-url", api.url + "/v1", "--parallel", "1"],
                                env={**os.environ, "IPO_API_KEY": KEY}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "meta_prompts" / "step_002.txt").exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert f"ipo optimize --resume {out}" in stderr and "Traceback" not in stderr
    assert (out / "history.md").exists() and json.loads((out / "prompts.json").read_text())["prompts"]


def test_sigint_right_after_start_is_clean(small, tmp_path, clip):
    proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", "optimize", str(small), "--classes",
                             str(small / "classes.txt"), "--lmm", "none", *map(str, clip), "--out",
                             str(tmp_path / "run"), "--llm-url", "http://127.0.0.1:9/v1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    # 130 (or 2 if it already reached the closed port); a signal that lands while Python is
    # still starting up can end it as killed by SIGINT (-2), but never with a traceback
    assert proc.returncode in (130, 2, -2), stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error:")


# ---- 5. servers and URLs -----------------------------------------------------------------
@pytest.mark.parametrize("url, needle", [("http://[::1", "not a valid URL"), ("ftp://host/v1", "not an http(s) URL"),
                                         ("127.0.0.1:8080/v1", "not an http(s) URL")])
def test_bad_server_urls(small, tmp_path, clip, url, needle):
    user_error(optimize(small, clip, tmp_path / "run", url=url), needle)
    user_error(run_ipo("describe", small, "--lmm-url", url), needle)


@pytest.mark.parametrize("answer, needle", [
    ({"choices": [{"message": {"content": 5}}]}, "without choices[0].message.content"),
    ({"choices": []}, "without choices[0].message.content"),
    ("<html>", "not JSON"),
])
def test_servers_that_answer_nonsense(small, tmp_path, clip, answer, needle):
    from servers import _ChatHandler  # noqa: F401 - the stand-in's module

    class Odd(FakeChatServer):
        pass

    server = Odd(garbage=isinstance(answer, str))
    if not isinstance(answer, str):
        server.reply = None

        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server.httpd.RequestHandlerClass = Handler
    with server:
        result = run_ipo("describe", small, "--lmm-url", server.url + "/v1")
    user_error(result, needle)


def test_a_usage_list_is_ignored(small, tmp_path, clip):
    def reply(payload):
        return "<INS>a photo of a <CLASS>, close up.</INS>"

    with FakeOpenAI(key=KEY, reply=reply) as api:
        api.usage = [1, 2, 3]
        result = optimize(small, clip, tmp_path / "run", url=api.url + "/v1")
    fine(result)
    assert json.loads(result.stdout)["tokens"]["prompt_tokens"] == 0


# ---- 6. the model store -------------------------------------------------------------------
@pytest.mark.parametrize("name, needle", [("../evil", "not allowed"), ("", "not allowed"), ("a/b", "not allowed"),
                                          ("qwen2.5-1.5b", "catalogue model"), (".hidden", "not allowed")])
def test_model_names(smollm, name, needle):
    user_error(run_ipo("models", "add", name, "--file", smollm, "--kind", "llm"), needle)


def test_adding_an_existing_name_needs_force(smollm):
    fine(run_ipo("models", "add", "mine", "--file", smollm, "--kind", "llm"))
    user_error(run_ipo("models", "add", "mine", "--file", smollm, "--kind", "llm"), "--force")
    fine(run_ipo("models", "add", "mine", "--file", smollm, "--kind", "llm", "--force"))


@pytest.mark.parametrize("args, needle", [
    (["models", "rm", "nothing"], "not installed"), (["models", "pull", "nothing"], "unknown model"),
    (["models", "path", "nothing"], "unknown model"), (["models", "add", "m", "--file", "/nonexistent.gguf",
                                                        "--kind", "llm"], "does not exist"),
    (["eval", "missing.json", "--images", "."], "does not exist"), (["optimize", "--resume", "/nonexistent"], "not an ipo run"),
    (["optimize", "--nope"], "No such option"), (["eval"], "Missing"),
])
def test_other_bad_invocations(args, needle):
    user_error(run_ipo(*args), needle)


# ---- 7. two writers on one cache -------------------------------------------------------------
def test_two_processes_share_one_cache(small, tmp_path, clip):
    procs = [subprocess.Popen([sys.executable, "-m", "ipo_cli", "eval", str(prompts(tmp_path, ["a {}"], f"p{i}.json")),
                               "--images", str(small), "--classes", str(small / "classes.txt"), *map(str, clip),
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o)["results"][0]["metrics"]["acc1"] for o, _ in outs]
    assert results[0] == results[1] and cache_entries() == 6


# ---- markup through the remaining commands ---------------------------------------------------
def test_markup_in_cache_paths_classify_prompts_and_model_names(small, tmp_path, clip):
    odd_cache = tmp_path / "cache [/] [bold]"
    fine(run_ipo("cache", "info", "--cache-dir", odd_cache))
    info = run_ipo("cache", "info", "--cache-dir", odd_cache)
    assert "cache [/] [bold]" in info.stdout
    fine(run_ipo("cache", "clear", "--cache-dir", odd_cache))
    result = run_ipo("classify", small, "--prompts", prompts(tmp_path, ["[link=x]a {}[/link] [/]"]),
                     "--classes", small / "classes.txt", *clip)
    fine(result)
    assert "[link=x]a {}[/link] [/]" in result.stdout
    user_error(run_ipo("models", "path", "[bold]x[/bold]"), "[bold]x[/bold]")
    user_error(run_ipo("models", "rm", "[/]"), "[/]")
