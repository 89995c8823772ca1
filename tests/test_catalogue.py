import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_ipo
from ipo_cli import catalogue
from ipo_cli.errors import IpoError
from servers import FakeHub


def test_shipped_catalogue_is_complete_and_cited():
    entries = catalogue.load_catalogue()
    llms = [e for e in entries.values() if e.kind == "llm"]
    lmms = [e for e in entries.values() if e.kind == "lmm"]
    assert len(llms) >= 3 and len(lmms) >= 4
    assert {"phi-3-mini", "llava-1.5-7b", "minicpm-v-2.6", "moondream2"} <= set(entries)
    for kind in ("llm", "lmm"):
        assert sum(e.default for e in entries.values() if e.kind == kind) == 1
    for e in entries.values():
        assert e.source["repo"].count("/") == 1 and e.source["cite"].startswith("https://")
        assert e.source.get("file") or e.source.get("file_pattern")
        assert e.note and e.license
        if e.kind == "lmm":
            assert e.handler in catalogue.HANDLERS
            assert e.source.get("mmproj") or e.source.get("mmproj_pattern")


def test_add_list_path_rm_with_a_real_gguf(smollm, tmp_path):
    added = run_ipo("models", "add", "smol", "--file", smollm, "--kind", "llm")
    assert added.returncode == 0, added.stderr
    listed = json.loads(run_ipo("models", "list", "--json").stdout)
    smol = next(r for r in listed if r["name"] == "smol")
    assert smol["installed"] and smol["size"] == smollm.stat().st_size and smol["source"] == "added"
    assert any(r["name"] == "qwen2.5-1.5b" and not r["installed"] for r in listed)
    path = run_ipo("models", "path", "smol")
    assert path.stdout.strip() == str(smollm.resolve())
    manifest = json.loads((Path(catalogue.models_dir()) / "manifest.json").read_text())
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
        catalogue.resolve("qwen2.5-1.6b", "llm")
    with pytest.raises(IpoError, match="not pulled yet") as info:
        catalogue.resolve("phi-3-mini", "llm")
    assert "ipo models pull phi-3-mini" in str(info.value)


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
        fetched = [r["path"] for r in hub.requests if "/resolve/" in r["path"]]
    assert sorted(Path(p).name for p in fetched) == ["mmproj-tiny-f16.gguf", "tiny-Q4_K_M.gguf"]
    model = catalogue.Manifest().load()["tiny-vlm"]
    assert model.path.read_bytes() == files["tiny-Q4_K_M.gguf"]
    assert model.mmproj.read_bytes() == files["mmproj-tiny-f16.gguf"]
    assert model.files["model"]["verified"] and model.when
    # pulled models resolve by name and are deleted with rm
    assert catalogue.resolve("tiny-vlm", "lmm").handler == "mtmd"
    assert run_ipo("models", "rm", "tiny-vlm").returncode == 0 and not model.path.exists()


def test_checksum_mismatch_deletes_the_file(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(10_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, listed_sha={"tiny-Q4_K_M.gguf": "0" * 64}) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
    assert result.returncode == 2
    assert "failed its checksum" in result.stderr and "deleted" in result.stderr
    assert not (catalogue.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf").exists()
    assert "tiny-vlm" not in catalogue.Manifest().load()


def test_broken_connection_is_resumed_with_a_range_request(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(400_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    with FakeHub("org/tiny-vlm-GGUF", files, drop_after=100_000, drops=1) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        model = catalogue.pull("tiny-vlm")
        ranges = [r["range"] for r in hub.requests if r["range"]]
    assert ranges == ["bytes=100000-"]
    assert model.path.read_bytes() == files["tiny-Q4_K_M.gguf"]


def test_killed_download_resumes_from_the_part_file(tmp_path, monkeypatch):
    files = {"tiny-Q4_K_M.gguf": gguf_bytes(200_000, 1), "mmproj-tiny.gguf": gguf_bytes(5_000, 2)}
    part = catalogue.models_dir() / "tiny-vlm" / "tiny-Q4_K_M.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["tiny-Q4_K_M.gguf"][:123_456])  # what a killed process left
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        result = run_ipo("models", "pull", "tiny-vlm")
        ranges = [r["range"] for r in hub.requests if r["range"]]
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


def test_pattern_matching_several_files_is_reported(tmp_path, monkeypatch):
    files = {"a-Q4_K_M.gguf": gguf_bytes(100, 1), "b-Q4_K_M.gguf": gguf_bytes(100, 2), "mmproj.gguf": gguf_bytes(100, 3)}
    with FakeHub("org/tiny-vlm-GGUF", files) as hub:
        hub_catalogue(tmp_path, monkeypatch, hub.url, LMM_ENTRY)
        with pytest.raises(IpoError, match="matches 2 files"):
            catalogue.pull("tiny-vlm")


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
    code = "import ipo_cli.catalogue as c; print(c.__file__); print(len(c.load_catalogue()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(tmp_path / "site"))
    assert int(out[1]) == len(list((root / "models").glob("*.json"))) == len(catalogue.load_catalogue())
