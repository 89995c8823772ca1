import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_ipo
from ipo_cli.store import hub, local
from ipo_cli.store.entries import HANDLERS, default_model, load_catalogue
from ipo_cli.store.pull import pull
from ipo_cli.errors import IpoError
from servers import FakeHub


def test_shipped_catalogue_is_complete_and_cited():
    entries = load_catalogue()
    llms = [e for e in entries.values() if e.kind == "llm"]
    lmms = [e for e in entries.values() if e.kind == "lmm"]
    assert len(llms) >= 4 and len(lmms) >= 4
    assert {"phi-3.5-mini", "qwen2.5-7b", "llava-1.5-7b", "minicpm-v-2.6", "moondream2", "smolvlm-500m"} <= set(entries)
    for kind in ("llm", "lmm"):
        for machine in ("cpu", "gpu"):
            defaults = [e for e in entries.values() if e.kind == kind and machine in e.default_for]
            assert len(defaults) == 1, (kind, machine)
            assert defaults[0].pinned, f"the default {kind} for a {machine} must be fully pinned"
    assert default_model("llm", "gpu").name == "qwen2.5-7b"
    assert default_model("lmm", "cpu").name == "smolvlm-500m"
    # the paper's local-model ablation ran Phi-3 with a ~5k-token meta-prompt
    assert entries["phi-3.5-mini"].n_ctx >= 6144
    for e in entries.values():
        assert e.source["repo"].count("/") == 1 and len(e.cite) >= 2
        assert any(c.startswith("https://") for c in e.cite)
        assert e.source.get("file"), f"{e.name} must name its exact file"
        assert e.note and e.license
        if e.kind == "lmm":
            assert e.handler in HANDLERS and e.source.get("mmproj")
    assert sum(e.pinned for e in entries.values()) >= 7


LISTINGS = json.loads((Path(__file__).parent / "data" / "hub_listings.json").read_text())


def test_add_list_path_rm_with_a_real_gguf(smollm, tmp_path):
    added = run_ipo("models", "add", "smol", "--file", smollm, "--kind", "llm")
    assert added.returncode == 0, added.stderr
    listed = json.loads(run_ipo("models", "list", "--json").stdout)
    smol = next(r for r in listed if r["name"] == "smol")
    assert smol["installed"] and smol["size"] == smollm.stat().st_size and smol["source"] == "added"
    assert any(r["name"] == "qwen2.5-1.5b" and not r["installed"] for r in listed)
    path = run_ipo("models", "path", "smol")
    assert path.stdout.strip() == str(smollm.resolve())
    manifest = json.loads((Path(local.models_dir()) / "manifest.json").read_text())
    assert manifest["models"]["smol"]["files"]["model"]["sha256"] == hashlib.sha256(smollm.read_bytes()).hexdigest()
    assert run_ipo("models", "rm", "smol").returncode == 0
    assert smollm.exists()  # a user's own file is never deleted
    assert "smol" not in [r["name"] for r in json.loads(run_ipo("models", "list", "--json").stdout)]


@pytest.mark.parametrize("case, expect", [
    ("not-gguf", "is not a GGUF file"),
    ("truncated", "truncated"),
    ("lmm-without-mmproj", "needs its projector"),
    ("bad-handler", "unknown chat handler"),
])
def test_add_refuses_bad_files(case, expect, tmp_path, smollm):
    args = ["models", "add", "m", "--file", smollm, "--kind", "llm"]
    if case == "not-gguf":
        bad = tmp_path / "x.gguf"
        bad.write_bytes(b"PK\x03\x04 a zip, not gguf" * 100)
        args[4] = bad
    elif case == "truncated":
        bad = tmp_path / "t.gguf"
        bad.write_bytes(b"GGUF" + b"\0" * 20)
        args[4] = bad
    elif case == "lmm-without-mmproj":
        args[-1] = "lmm"
    elif case == "bad-handler":
        args[-1] = "lmm"
        args += ["--mmproj", smollm, "--handler", "llava-15"]
    result = run_ipo(*args)
    assert result.returncode == 2 and expect in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_and_unpulled_names():
    with pytest.raises(IpoError, match="unknown model 'qwen2.5-1.6b'.*qwen2.5-1.5b"):
        local.resolve("qwen2.5-1.6b", "llm")
    with pytest.raises(IpoError, match="not pulled yet") as info:
        local.resolve("phi-3.5-mini", "llm")
    assert "ipo models pull phi-3.5-mini" in str(info.value)


def hub_catalogue(tmp_path, monkeypatch, hub_url, entry):
    folder = tmp_path / "catalogue"
    folder.mkdir(exist_ok=True)
    (folder / f"{entry['name']}.json").write_text(json.dumps(entry))
    monkeypatch.setenv("IPO_CATALOGUE_DIR", str(folder))
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


LMM_ENTRY = {"name": "tiny-vlm", "kind": "lmm", "note": "test", "license": "mit", "handler": "mtmd",
             "source": {"repo": "org/tiny-vlm-GGUF", "revision": "main", "file_pattern": "*Q4_K_M.gguf",
                        "mmproj_pattern": "mmproj*.gguf", "cite": "https://example.invalid"}}


def gguf_bytes(n: int, seed: int) -> bytes:
    return b"GGUF" + hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def test_pull_resolves_patterns_downloads_and_verifies(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(300_000, 1), "tiny-Q8_0.gguf": gguf_bytes(1000, 2),
             "mmproj-tiny-f16.gguf": gguf_bytes(50_000, 3)}
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
        assert result.returncode == 0, result.stderr
        fetched = [r["path"] for r in hub.requests if r["host"] == "cdn"]
    assert sorted(Path(p).name for p in fetched) == ["mmproj-tiny-f16.gguf", "tiny-Q4_K_M.gguf"]
    model = local.Manifest().load()["tiny-vlm"]
    assert model.path.read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert model.mmproj.read_bytes() == files["mmproj-tiny-f16.gguf"]
    assert model.files["model"]["verified"] and model.when
    # pulled models resolve by name and are deleted with rm
    assert local.resolve("tiny-vlm", "lmm").handler == "mtmd"
    assert run_ipo("models", "rm", "tiny-vlm").returncode == 0 and not model.path.exists()


def test_checksum_mismatch_deletes_the_file(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(10_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, listed_sha={"tiny-Q4_K_M.gguf": "0" * 64}) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
    assert result.returncode == 2
    assert "failed its checksum" in result.stderr and "deleted" in result.stderr
    assert not (local.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf").exists()
    assert "tiny-vlm" not in local.Manifest().load()


def test_broken_connection_is_resumed_with_a_range_request(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(400_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, drop_after=100_000, drops=1) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        model = pull("tiny-vlm")
        ranges = [r["range"] for r in hub.requests if r["range"] and r["host"] == "cdn"]
    assert ranges == ["bytes=100000-"]
    assert model.path.read_bytes() == files["tiny-Q4_K_M.gguf"]


def test_killed_download_resumes_from_the_part_file(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(200_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    part = local.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["tiny-Q4_K_M.gguf"][:123_456])  # what a killed process left
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
        ranges = [r["range"] for r in hub.requests if r["range"] and r["host"] == "cdn"]
    assert result.returncode == 0, result.stderr
    assert ranges == ["bytes=123456-"] and not part.exists()


def test_pull_offline_and_unreachable_hub_are_one_line(tmp_path, monkeypatch):
    hub_catalogue(tmp_path, monkeypatch, "http://127.0.0.1:9", LMM_ENTRY)  # nothing listens on port 9
    refused = run_ipo("models", "pull", "tiny-vlm")
    assert refused.returncode == 2 and "could not reach the model hub" in refused.stderr
    offline = run_ipo("models", "pull", "tiny-vlm", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "offline" in offline.stderr
    for r in (refused, offline):
        assert len(r.stderr.strip().splitlines()) == 1


def test_pattern_matching_several_files_resolves_and_is_reported(tmp_path, monkeypatch):
    files = {"a-Q4_K_M.gguf": gguf_bytes(100, 1), "b-Q4_K_M.gguf": gguf_bytes(100, 2), "mmproj.gguf": gguf_bytes(100, 3)}
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        said = []
        model = pull("tiny-vlm", notify=said.append)
    assert model.path.name == "a-Q4_K_M.gguf"
    assert any("a-Q4_K_M.gguf, b-Q4_K_M.gguf; chose a-Q4_K_M.gguf" in m for m in said)


def test_installed_wheel_carries_the_catalogue(tmp_path):
    """A non-editable install reads models/ from the package (ipo_cli/catalogue_data)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = "import ipo_cli.store.entries as c; print(c.__file__); print(len(c.load_catalogue()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(tmp_path / "site"))
    assert int(out[1]) == len(list((root / "models").glob("*.json"))) == len(load_catalogue())


# ---- the catalogue against the real hub's listings -------------------------------------
def stand_in(name: str) -> bytes:
    """Small GGUF-looking bytes for a real file name (the real files are gigabytes)."""
    return b"GGUF" + hashlib.sha256(name.encode()).digest() * 64


def real_hub() -> FakeHub:
    """A hub that serves every catalogue repository at its real revision with the real file
    names (tests/data/hub_listings.json), each file a small stand-in."""
    hub = FakeHub()
    for key, files in LISTINGS.items():
        if key.startswith("_"):
            continue
        repo, revision = key.split("@")
        hub.add_repo(repo, {name: stand_in(name) for name in files}, revision)
    return hub


def stand_in_catalogue(tmp_path, monkeypatch, hub_url, change=None) -> dict:
    """The shipped catalogue, with each pin's size and sha256 swapped for the stand-in's:
    names, revisions and patterns stay exactly as shipped."""
    folder = tmp_path / "catalogue"
    folder.mkdir(exist_ok=True)
    entries = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "models").glob("*.json")):
        entry = json.loads(path.read_text())
        for role, pin in entry["files"].items():
            data = stand_in(entry["source"]["file" if role == "model" else role])
            pin.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        if change:
            change(entry)
        (folder / path.name).write_text(json.dumps(entry))
        entries[entry["name"]] = entry
    monkeypatch.setenv("IPO_CATALOGUE_DIR", str(folder))
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return entries


def test_catalogue_pins_agree_with_the_real_listings():
    for e in load_catalogue().values():
        listing = LISTINGS.get(f"{e.repo}@{e.revision}")
        assert listing is not None, f"{e.name}: no listing of {e.repo}@{e.revision}"
        for role in ("model", "mmproj") if e.kind == "lmm" else ("model",):
            name = e.source["file" if role == "model" else role]
            assert name in listing, f"{e.name}: {name} is not in {e.repo}@{e.revision}"
            size, sha = listing[name]
            pin = e.files.get(role, {})
            if pin:
                assert (pin["size"], pin["sha256"]) == (size, sha), e.name


def test_every_catalogue_entry_pulls_its_exact_files(tmp_path, monkeypatch):
    with real_hub() as hub:
        entries = stand_in_catalogue(tmp_path, monkeypatch, hub.url)
        for name, entry in entries.items():
            said = []
            model = pull(name, notify=said.append)
            assert model.path.name == entry["source"]["file"]
            assert model.path.read_bytes() == stand_in(entry["source"]["file"])
            if entry["kind"] == "lmm":
                assert model.mmproj.name == entry["source"]["mmproj"]
            assert not any("pattern matched" in m for m in said)  # exact names: nothing to choose
            expected = "catalogue" if entry["files"] else "hub"
            assert {r["verified"] for r in model.files.values()} == {expected}
        fetched = [r for r in hub.requests if r["host"] == "cdn"]
    assert len(fetched) == sum(1 + (e["kind"] == "lmm") for e in entries.values())


@pytest.mark.parametrize("change, expect", [
    (lambda e: e["source"].update(revision="0" * 40) if e["name"] == "qwen2.5-vl-3b" else None, "has no revision"),
    (lambda e: e["source"].update(mmproj="mmproj-Qwen2.5-VL-3B-Instruct-q8_0.gguf")
     if e["name"] == "qwen2.5-vl-3b" else None, "has no file"),
])
def test_a_wrong_revision_or_renamed_file_fails_the_pull(tmp_path, monkeypatch, change, expect):
    with real_hub() as hub:
        stand_in_catalogue(tmp_path, monkeypatch, hub.url, change)
        result = run_ipo("models", "pull", "qwen2.5-vl-3b")
    assert result.returncode == 2 and expect in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_ambiguous_pattern_resolves_by_preference_and_says_so(tmp_path, monkeypatch):
    def to_patterns(entry):
        if entry["name"] == "qwen2.5-vl-3b":  # the pattern that used to make pull refuse
            entry["source"] = {"repo": entry["source"]["repo"], "revision": entry["source"]["revision"],
                               "file_pattern": "*.gguf", "mmproj_pattern": "mmproj*.gguf"}
            entry["files"] = {}

    with real_hub() as hub:
        stand_in_catalogue(tmp_path, monkeypatch, hub.url, to_patterns)
        result = run_ipo("models", "pull", "qwen2.5-vl-3b")
    assert result.returncode == 0, result.stderr
    assert "chose Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf" in result.stderr
    assert "chose mmproj-Qwen2.5-VL-3B-Instruct-Q8_0.gguf" in result.stderr
    model = local.Manifest().load()["qwen2.5-vl-3b"]
    assert model.mmproj.name == "mmproj-Qwen2.5-VL-3B-Instruct-Q8_0.gguf"
    assert model.files["model"]["verified"] == "hub"


def test_preference_order():
    assert hub.prefer(["m-f16.gguf", "m-Q8_0.gguf", "m-Q4_K_M.gguf"], "model") == "m-Q4_K_M.gguf"
    assert hub.prefer(["mmproj-f16.gguf", "mmproj-Q8_0.gguf"], "mmproj") == "mmproj-Q8_0.gguf"
    assert hub.prefer(["mmproj-f32.gguf", "mmproj-model-f16.gguf"], "mmproj") == "mmproj-model-f16.gguf"
    assert hub.prefer(["b.gguf", "a.gguf"], "model") == "a.gguf"


def test_gated_repo_needs_the_token_which_never_reaches_the_cdn_or_disk(tmp_path, monkeypatch):
    token = "hf_secret_token_123456"
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(20_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, gated=True, token=token) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
        refused = run_ipo("models", "pull", "tiny-vlm")
        assert refused.returncode == 2 and "gated" in refused.stderr and "hf auth login" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        pulled = run_ipo("models", "pull", "tiny-vlm", env={"HF_TOKEN": token})
        assert pulled.returncode == 0, pulled.stderr
        hub_auth = {r["auth"] for r in hub.requests if r["host"] == "hub"}
        cdn_auth = {r["auth"] for r in hub.requests if r["host"] == "cdn"}
    assert f"Bearer {token}" in hub_auth and cdn_auth == {None}
    for path in Path(local.home()).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert token not in pulled.stdout + pulled.stderr


def test_a_stored_login_token_is_used(tmp_path, monkeypatch):
    token = "hf_stored_login_token"
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(token)
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(2_000, 1), "mmproj-tiny.gguf": gguf_bytes(2_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, gated=True, token=token) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        # huggingface_hub reads HF_HOME once, when it is imported (constants.HF_TOKEN_PATH), and an
        # earlier in-process test may have imported it already: point its constant there too.
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
        result = run_ipo("models", "pull", "tiny-vlm", env={"HF_HOME": str(tmp_path / "hf-home")})
    assert result.returncode == 0, result.stderr


def hf_snapshot(tmp_path, entry) -> Path:
    """The folder `hf download` fills: HF_HUB_CACHE/models--ORG--NAME/snapshots/REVISION/."""
    snap = (tmp_path / "hf-cache" / ("models--" + entry["source"]["repo"].replace("/", "--")) / "snapshots"
            / entry["source"]["revision"])
    snap.mkdir(parents=True)
    return snap


def test_a_file_in_the_hugging_face_cache_is_used_in_place(tmp_path, monkeypatch):
    with real_hub() as hub:
        entries = stand_in_catalogue(tmp_path, monkeypatch, hub.url)
        entry = entries["smolvlm-500m"]
        snap = hf_snapshot(tmp_path, entry)
        for key in ("file", "mmproj"):
            (snap / entry["source"][key]).write_bytes(stand_in(entry["source"][key]))
        result = run_ipo("models", "pull", "smolvlm-500m")
        downloads = [r for r in hub.requests if r["host"] == "cdn"]
    assert result.returncode == 0, result.stderr
    assert "from your Hugging Face cache" in result.stderr and downloads == []
    model = local.Manifest().load()["smolvlm-500m"]
    assert model.path == snap / entry["source"]["file"]
    assert run_ipo("models", "rm", "smolvlm-500m").returncode == 0
    assert (snap / entry["source"]["file"]).exists()  # the user's hub cache is never deleted


def test_a_corrupt_hugging_face_cache_copy_is_refused(tmp_path, monkeypatch):
    with real_hub() as hub:
        entries = stand_in_catalogue(tmp_path, monkeypatch, hub.url)
        entry = entries["qwen2.5-1.5b"]
        snap = hf_snapshot(tmp_path, entry)
        data = bytearray(stand_in(entry["source"]["file"]))
        data[-1] ^= 1
        (snap / entry["source"]["file"]).write_bytes(bytes(data))
        result = run_ipo("models", "pull", "qwen2.5-1.5b")
    assert result.returncode == 2 and "failed its checksum" in result.stderr
    assert (snap / entry["source"]["file"]).exists()  # reported, not deleted: it is the user's


def test_two_pulls_of_the_same_file_wait_for_each_other(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    files = {"tiny-Q4_K_M.gguf": gguf_bytes(3_000_000, 1), "mmproj-tiny.gguf": gguf_bytes(2_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub.cdn_delay = 0.6
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        procs = [subprocess.Popen([sys.executable, "-m", "ipo_cli", "models", "pull", "tiny-vlm"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        model_gets = [r for r in hub.requests if r["host"] == "cdn" and "Q4_K_M" in r["path"]]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("waiting" in err for _, err in outs)
    assert len(model_gets) == 1  # the second found the finished file
    assert local.Manifest().load()["tiny-vlm"].path.read_bytes() == files["tiny-Q4_K_M.gguf"]


def test_a_hub_listing_without_sha256_is_not_installed(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(2_000, 1), "mmproj-tiny.gguf": gguf_bytes(2_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, listed_sha={"tiny-Q4_K_M.gguf": None}) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
    assert result.returncode == 2 and "no valid sha256" in result.stderr
    assert not (local.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf").exists()


def test_a_pinned_model_in_the_hf_cache_needs_no_hub(tmp_path, monkeypatch):
    entry = json.loads((Path(__file__).resolve().parent.parent / "models" / "smolvlm-500m.json").read_text())
    for role, pin in entry["files"].items():
        data = stand_in(entry["source"]["file" if role == "model" else role])
        pin.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    hub_catalogue(tmp_path, monkeypatch, "http://127.0.0.1:9", entry)  # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    snap = hf_snapshot(tmp_path, entry)
    for key in ("file", "mmproj"):
        (snap / entry["source"][key]).write_bytes(stand_in(entry["source"][key]))
    result = run_ipo("models", "pull", "smolvlm-500m")
    assert result.returncode == 0, result.stderr
    assert local.Manifest().load()["smolvlm-500m"].files["mmproj"]["verified"] == "catalogue"


def test_the_file_listing_is_followed_page_by_page(tmp_path, monkeypatch):
    """The hub pages its tree listing (Link: <...>; rel="next"); a file on the last page
    is found, and every page is asked for once, on the hub's own host."""
    files = {f"aa-{i}.gguf": gguf_bytes(1_500, 10 + i) for i in range(4)}
    files |= {"tiny-Q4_K_M.gguf": gguf_bytes(2_000, 1), "mmproj-tiny.gguf": gguf_bytes(2_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, page_size=2) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
        pages = [r["path"] for r in hub.requests if r["host"] == "hub" and "/tree/" in r["path"]]
    assert result.returncode == 0, result.stderr
    assert len(pages) == 4 and len(set(pages)) == 4  # 7 entries (6 files and README.md), 2 a page
    assert all("recursive=true" in p for p in pages) and "cursor=" not in pages[0]
    assert local.Manifest().load()["tiny-vlm"].path.read_bytes() == files["tiny-Q4_K_M.gguf"]


def test_next_page_links_and_their_host():
    assert hub.next_page('<https://h/api/x?cursor=2>; rel="next"', "https://h/api/x") == "https://h/api/x?cursor=2"
    assert hub.next_page('</api/x?c=3>; rel="next", <https://h/api/x?c=0>; rel="first"',
                         "https://h/api/x") == "https://h/api/x?c=3"
    assert hub.next_page('<https://h/a>; rel="prev"', "https://h/a") is None
    assert hub.next_page(None, "https://h/a") is None


def test_a_part_file_longer_than_the_file_starts_again(tmp_path, monkeypatch):
    """A Range past the end is answered 416 (RFC 9110): the .part is not the file's start."""
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(20_000, 1), "mmproj-tiny.gguf": gguf_bytes(2_000, 2)}
    part = local.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"GGUF" + b"x" * 30_000)  # longer than the file: left by another pull of another revision
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
        ranges = [r["range"] for r in hub.requests if r["host"] == "cdn" and "Q4_K_M" in r["path"]]
    assert result.returncode == 0, result.stderr
    assert ranges == ["bytes=30004-", None] and not part.exists()
    assert local.Manifest().load()["tiny-vlm"].path.read_bytes() == files["tiny-Q4_K_M.gguf"]
