"""Property-based tests (Hypothesis) for every file ipo reads: classes files, split files,
prompts files, the model manifest, catalogue entries, a run's config.json and
history.jsonl, CLIP model configs. Each gets generated documents: any JSON value, its
valid example with one part replaced by any JSON value, truncations, raw bytes, deep
nesting and odd Unicode. The property: the reader returns a valid record or raises
IpoError (one line for the user), never any other exception.

Runs are repeatable (derandomize: the examples follow from the test itself), keep no
example database in the repository (database=None) and stay fast (no model is loaded).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipo_cli.errors import IpoError

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Odd Unicode on purpose: lone surrogates, controls, bidi overrides, NUL, astral characters.
ODD_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["", "\0", "\ud800", "\u202e", "\x1b[2J", "..", "/etc/passwd", "a" * 300, "{}", "<INS>", "💥"])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | ODD_TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
                    max_leaves=12)


def _slots(doc):
    """Every (container, key) in a JSON document, the document itself as (None, None)."""
    out = [(None, None)]
    stack = [doc]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            out.append((item, key))
            stack.append(item[key])
    return out


@st.composite
def mutated(draw, valid):
    doc = copy.deepcopy(valid)
    container, key = draw(st.sampled_from(_slots(doc)))
    value = draw(JSON)
    if container is None:
        return value
    container[key] = value
    return doc


def encode(doc) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def documents(valid) -> st.SearchStrategy[bytes]:
    """Bytes that a reader of `valid`-like documents may meet."""
    text = encode(valid)
    return st.one_of(
        mutated(valid).map(encode),
        mutated(valid).map(encode),  # twice the weight: the near misses find the most
        JSON.map(encode),
        st.integers(0, len(text)).map(lambda n: text[:n]),
        st.binary(max_size=64),
        st.integers(1, 5000).map(lambda d: b"[" * d + b"]" * d),
        st.integers(1, 5000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
        st.just(b"\xef\xbb\xbf" + text),  # a BOM
        st.just(text.replace(b'"', b"'")),
    )


def holds(call) -> None:
    """The property: a value, or an IpoError with a message."""
    try:
        call()
    except IpoError as exc:
        assert str(exc).strip()


# ---- classes files ------------------------------------------------------------------------
@FUZZ
@given(raw=documents({"cifar10": ["airplane", "cat", "dog"]}))
def test_classes_json(tmp_path, raw):
    from ipo_cli.data.folders import read_classes

    path = tmp_path / "classes.json"
    path.write_bytes(raw)
    holds(lambda: read_classes(path))


@FUZZ
@given(raw=st.binary(max_size=200) | st.lists(ODD_TEXT, max_size=6).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))
def test_classes_text(tmp_path, raw):
    from ipo_cli.data.folders import read_classes

    path = tmp_path / "classes.txt"
    path.write_bytes(raw)
    holds(lambda: read_classes(path))


# ---- split files ------------------------------------------------------------------------
SPLIT = {"train": [["a/1.png", 0, "a"], ["b/1.png", 1, "b"]], "val": [["a/1.png", 0, "a"]],
         "test": [["b/1.png", 1, "b"]]}


@FUZZ
@given(raw=documents(SPLIT))
def test_split_files(tmp_path, raw):
    from ipo_cli.data.folders import load_split

    for name in ("a", "b"):
        (tmp_path / "img" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / name / "1.png").touch()
    path = tmp_path / "split.json"
    path.write_bytes(raw)
    holds(lambda: load_split(path, tmp_path / "img", "train"))


# ---- prompts files ----------------------------------------------------------------------
PROMPTS = {"schema": "ipo.prompts/v1", "prompts": [{"template": "a photo of a {}.", "accuracy": 50.0}],
           "classes": ["a", "b"], "clip": "ViT-B-16:openai"}


@FUZZ
@given(raw=documents(PROMPTS) | documents(["a photo of a {}.", "a {}."]) | documents({"cat": ["a cat."]}))
def test_prompts_files(tmp_path, raw):
    from ipo_cli.data.prompts import read_info, read_prompts

    path = tmp_path / "prompts.json"
    path.write_bytes(raw)
    holds(lambda: read_prompts(path))
    holds(lambda: read_info(path))


# ---- the model manifest -----------------------------------------------------------------
MANIFEST = {"version": 1, "models": {"m": {"name": "m", "kind": "llm", "handler": None, "n_ctx": 4096,
                                           "source": "added", "when": "2026-01-01",
                                           "files": {"model": {"path": "/x/m.gguf", "sha256": "0" * 64,
                                                               "size": 10}}}}}


@FUZZ
@given(raw=documents(MANIFEST))
def test_manifest(tmp_path, raw):
    from ipo_cli.store.local import Manifest

    (tmp_path / "manifest.json").write_bytes(raw)
    holds(lambda: Manifest(tmp_path).load())


# ---- catalogue entries ------------------------------------------------------------------
CATALOGUE = json.loads((Path(__file__).resolve().parent.parent / "models" / "qwen2.5-1.5b.json").read_text())


@FUZZ
@given(raw=documents({**CATALOGUE, "name": "fuzzed-entry", "default_for": []}))
def test_catalogue_entries(tmp_path, raw, monkeypatch):
    from ipo_cli.store.entries import load_catalogue

    folder = tmp_path / "catalogue"
    folder.mkdir(exist_ok=True)
    (folder / "fuzzed-entry.json").write_bytes(raw)
    monkeypatch.setenv("IPO_CATALOGUE_DIR", str(folder))
    holds(load_catalogue)


# ---- a run's config.json and history.jsonl ------------------------------------------------
CONFIG = {"format": 1, "request": {"images": "imgs", "shots": 1, "seed": 1, "steps": 2, "candidates": 2,
                                   "temperature": 1.0, "select": "train", "clip": "ViT-B-16:openai"},
          "models": {"llm": "x"}, "split": {"train": [["imgs/a/1.png", 0]]}}


@FUZZ
@given(raw=documents(CONFIG))
def test_run_config_on_resume(tmp_path, raw):
    from ipo_cli.optimize.request import Overrides, make_request
    from ipo_cli.optimize.run_folder import RunFolder

    (tmp_path / "config.json").write_bytes(raw)

    def resume():
        _, config = RunFolder.open(tmp_path)
        make_request(Overrides(), saved=config.get("request", {}))

    holds(resume)


RECORD = {"type": "candidate", "step": 1, "attempt": 0, "index": 0, "seed": 5, "raw": "<INS>a <CLASS></INS>",
          "template": "a {}", "valid": True, "reason": None, "accuracy": 50.0, "loss": 1.0}


@FUZZ
@given(lines=st.lists(documents(RECORD), min_size=1, max_size=4), torn=st.booleans())
def test_history_lines(tmp_path, lines, torn):
    from ipo_cli.optimize.run_folder import RunFolder

    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + (b"" if torn else b"\n")
    (tmp_path / "history.jsonl").write_bytes(data)
    holds(lambda: RunFolder(tmp_path).records())


# ---- CLIP model configs -----------------------------------------------------------------
CLIP_CONFIG = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@FUZZ
@given(raw=documents(CLIP_CONFIG))
def test_clip_configs(tmp_path, raw):
    from ipo_cli.clip.spec import parse_clip

    path = tmp_path / "fuzz-clip.json"
    path.write_bytes(raw)
    holds(lambda: parse_clip(str(path)))


@pytest.mark.parametrize("name", ["a\0b", "n" * 300, "x/" * 3000])
def test_user_paths_the_os_refuses_are_one_line(name):
    from ipo_cli.data.folders import load_dataset, read_classes
    from ipo_cli.data.prompts import read_prompts

    for call in (lambda: read_classes(Path(name)), lambda: read_prompts(name), lambda: load_dataset(Path(name))):
        holds(call)
    assert os.path.exists("/")  # nothing above touched the file system outside the names
