"""Captioning: payloads checked against a local OpenAI-compatible server (no multimodal
weights exist on this machine), the real caption cache, redaction and the CLI."""

import base64
import io
import json
import shutil

from conftest import run_ipo, run_ipo_without_torch
from PIL import Image
from servers import FakeChatServer

from ipo_cli import cache
from ipo_cli.llm import captions as describe


def image_parts(payload):
    content = payload["messages"][0]["content"]
    return [p for p in content if p["type"] == "image_url"], [p for p in content if p["type"] == "text"]


def test_payload_is_a_reencoded_data_uri_with_the_instruction(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGBA", (1200, 600), (10, 200, 30, 255)).save(big)
    with FakeChatServer() as server:
        backend = describe.ServerVision(server.url + "/v1", "vlm")
        report = describe.Captioner(backend).caption([big])
        payload = server.payloads[0]
    images, texts = image_parts(payload)
    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "JPEG" and decoded.size == (448, 224)
    assert texts[0]["text"] == describe.DEFAULT_INSTRUCTION
    assert payload["model"] == "vlm" and payload["temperature"] == 0.0
    assert str(big) not in json.dumps(payload)  # never a path for the server to open
    assert report.captions[0].caption.startswith("a grey object")


def test_captions_are_cached_by_image_model_and_instruction(tmp_path, fashion_train):
    paths = sorted(fashion_train.rglob("*.png"))[:5]
    store = cache.Store(tmp_path, "captions")
    with FakeChatServer() as server:
        backend = describe.ServerVision(server.url + "/v1", "vlm")
        first = describe.Captioner(backend, store).caption(paths)
        second = describe.Captioner(backend, store).caption(paths)
        other = describe.Captioner(backend, store, describe.CaptionSettings(instruction="Say hi.")).caption(paths[:2])
        calls = len(server.requests)
    assert first.from_cache == 0 and second.from_cache == 5 and other.from_cache == 0
    assert calls == 5 + 0 + 2
    assert [c.caption for c in first.captions] == [c.caption for c in second.captions]


def test_class_names_are_redacted_and_counted():
    pattern = describe.redaction_patterns(["ankle boot", "t-shirt", "bag"])
    text, n = describe.redact("Two Ankle Boots next to a T shirt, a tshirt and bags; a bagel.", pattern)
    assert n == 4
    assert "boot" not in text.lower() and "shirt" not in text.lower() and "bags" not in text
    assert "bagel" in text  # words that merely start like a class stay


def test_unreadable_image_is_listed_and_others_captioned(tmp_path, fashion_train):
    good = sorted(fashion_train.rglob("*.png"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with FakeChatServer() as server:
        report = describe.Captioner(describe.ServerVision(server.url + "/v1")).caption([good[0], bad, good[1]])
    assert [c.path for c in report.captions] == [str(good[0]), str(good[1])]
    assert report.failed[0][0] == str(bad)


def test_describe_command_end_to_end(tmp_path, fashion_train):
    images = tmp_path / "imgs"
    shutil.copytree(fashion_train, images)
    (images / "bag" / "broken.png").write_bytes(b"nope")
    out = tmp_path / "captions.jsonl"

    def reply(payload):
        return "A leather bag with a strap, shown on a black background."

    with FakeChatServer(reply) as server:
        args = ["describe", images, "--classes", images / "classes.txt", "--lmm-url", server.url + "/v1",
                "--lmm-model", "vlm", "--out", out, "--json"]
        first = run_ipo(*args)
        second = run_ipo(*args)
        calls = len(server.requests)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(l) for l in first.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert summary == {"model": f"{server.url}/v1#vlm", "captioned": 60, "from_cache": 0, "failed": 1, "redactions": 60}
    assert "broken.png" in first.stderr
    assert all("[...]" in l["caption"] and "bag" not in l["caption"].lower() for l in lines[:-1])
    assert {l["label"] for l in lines[:-1]} >= {"bag", "ankle boot"}
    assert json.loads(second.stdout.splitlines()[-1])["summary"]["from_cache"] == 60
    assert calls == 60
    assert len(out.read_text().splitlines()) == 60


def test_describe_bad_server_and_missing_model_are_one_line(tmp_path, fashion_train):
    refused = run_ipo("describe", fashion_train, "--lmm-url", "http://127.0.0.1:9/v1")
    assert refused.returncode == 2 and "cannot reach the model server" in refused.stderr
    unpulled = run_ipo("describe", fashion_train, "--lmm", "moondream2")
    assert unpulled.returncode == 2 and "ipo models pull moondream2" in unpulled.stderr
    no_mmproj = run_ipo("describe", fashion_train, "--lmm", tmp_path / "x.gguf")
    assert no_mmproj.returncode == 2 and "does not exist" in no_mmproj.stderr


def test_projector_that_does_not_fit_fails_before_any_image(smollm, fashion_train):
    result = run_ipo("describe", fashion_train, "--lmm", smollm, "--mmproj", smollm, "--handler", "llava-1-5")
    assert result.returncode == 2
    assert "check that the projector belongs to the model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_describe_flat_folder_redacts_with_classes_file(tmp_path, fashion_train):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(fashion_train.rglob("*.png"))[:3]:
        (flat / p.name).write_bytes(p.read_bytes())
    with FakeChatServer(lambda p: "A sneaker next to a sandal.") as server:
        result = run_ipo("describe", flat, "--classes", fashion_train / "classes.txt",
                         "--lmm-url", server.url + "/v1", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert lines[-1]["summary"]["captioned"] == 3 and lines[-1]["summary"]["redactions"] == 6
    assert lines[0]["caption"] == "A [...] next to a [...]." and lines[0]["label"] is None


def test_redaction_keeps_colours_and_generic_words():
    """Realistic captions (in the style of the official IPO repo's MiniCPM descriptions of
    Flowers102): only the whole class phrase goes."""
    pattern = describe.redaction_patterns(["pink primrose", "sunflower", "black-eyed susan"])
    caption = ("The flower in the image is a pink primrose with vibrant pink petals and a yellow center; "
               "two pink primroses grow beside a tall sunflower. The black eyed Susan in the back has dark "
               "centers. The petals are pink and the leaves are green.")
    text, n = describe.redact(caption, pattern)
    assert n == 4
    assert "primrose" not in text and "sunflower" not in text and "susan" not in text.lower()
    for kept in ("flower in the image", "vibrant pink petals", "yellow center", "dark centers", "green"):
        assert kept in text


def test_only_the_seeded_subset_that_fits_is_described():
    from ipo_cli.optimize.plan import described_subset
    from ipo_cli.optimize.request import Request

    request = Request(images="x", seed=3, n_ctx=4096)
    chosen = described_subset(request, {"llm": "x"}, 200)
    assert 20 <= len(chosen) < 200 and chosen == sorted(chosen)
    assert chosen == described_subset(request, {"llm": "x"}, 200)  # seeded
    assert chosen != described_subset(Request(images="x", seed=4, n_ctx=4096), {"llm": "x"}, 200)
    bigger = described_subset(Request(images="x", seed=3, n_ctx=16384), {"llm": "x"}, 200)
    assert len(bigger) > len(chosen)
    assert described_subset(request, {"llm": "x"}, 10) == list(range(10))  # all fit


# ---- the CLIP-only describer (--lmm clip) ----------------------------------------------
def test_attribute_vocabulary_is_complete_and_cited():
    from ipo_cli.clip.attributes import VOCABULARY_FILE, load_vocabulary

    vocabulary = load_vocabulary()
    families = {f.name: f for f in vocabulary.families}
    assert set(families) == {"viewpoint", "count", "shape", "material", "colour", "texture", "background", "lighting"}
    assert len(families["texture"].terms) == 47 and "honeycombed" in families["texture"].terms  # DTD's 47
    assert len(families["colour"].terms) == 11  # Berlin and Kay's basic colour terms
    raw = json.loads(VOCABULARY_FILE.read_text())
    assert all(f.get("source") for f in raw["families"])
    assert all(f.prompt.count("{}") == 1 for f in vocabulary.families)


def test_clip_describer_reads_the_best_terms_and_never_a_class_name(tiny_clip, fashion_train):
    import numpy as np

    from ipo_cli.clip.attributes import ClipAttributes

    paths = sorted(fashion_train.rglob("*.png"))[:4]
    emb, kept, _ = tiny_clip.embed_images(paths)
    plain = ClipAttributes(tiny_clip)
    before = tiny_clip.stats["texts_encoded"]
    sentence = plain.describe_embedding(emb[0])
    colours = next(f for f in plain.vocabulary.families if f.name == "colour")
    scores = tiny_clip.encode_texts(colours.texts()) @ emb[0]
    best = [colours.terms[i] for i in np.argsort(-scores)[:2]]
    assert f"mostly {best[0]} and {best[1]}" in sentence
    assert sentence.endswith(".") and ";" in sentence
    ClipAttributes(tiny_clip).describe_embedding(emb[1])  # a second describer: no second encoding
    encoded = tiny_clip.stats["texts_encoded"] - before
    assert encoded <= sum(len(f.terms) for f in plain.vocabulary.families)
    # A run whose classes are vocabulary terms (DTD's textures, a colour) never hears them.
    careful = ClipAttributes(tiny_clip, exclude=[best[0], "striped", "polka-dotted"])
    assert careful.identity != plain.identity
    for row in emb:
        said = careful.describe_embedding(row)
        assert best[0] not in said.split() and "striped" not in said and "polka-dotted" not in said


def test_describe_with_clip_alone_is_cached(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    args = ["describe", fashion_train, "--lmm", "clip", "--clip", tiny_config, "--clip-weights", tiny_checkpoint,
            "--json"]
    first = run_ipo(*args)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["captioned"] == 60 and summary["failed"] == 0
    assert summary["model"].startswith("clip-attributes@tiny-clip")
    classes = [c.strip() for c in (fashion_train / "classes.txt").read_text().splitlines() if c.strip()]
    for line in lines[:-1]:
        assert line["caption"].startswith("a ") and "; mostly " in line["caption"]
        assert not any(name in line["caption"] for name in classes) and line["redactions"] == 0
    second = json.loads(run_ipo(*args).stdout.splitlines()[-1])["summary"]
    assert second["from_cache"] == 60
    warm = run_ipo_without_torch(*args)  # every embedding and caption cached: no torch, no open_clip
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout.splitlines()[-1])["summary"] == {**second, "from_cache": 60}


def test_optimize_with_the_clip_describer(tmp_path, fashion_train, smollm, tiny_config, tiny_checkpoint):
    data = tmp_path / "three"
    for name in ("bag", "sneaker", "sandal"):
        shutil.copytree(fashion_train / name, data / name)
    (data / "classes.txt").write_text("bag\nsneaker\nsandal\n")
    out = tmp_path / "run"
    result = run_ipo("optimize", data, "--classes", data / "classes.txt", "--shots", "1", "--steps", "1",
                     "--candidates", "1", "--llm", smollm, "--n-ctx", "2048", "--lmm", "clip",
                     "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "LMM clip (the CLIP-only describer" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["models"]["lmm"].startswith("clip-attributes@" + config["models"]["clip"])
    described = config["descriptions"]
    assert len(described) == 3 and all("; mostly " in d["description"] for d in described)
    assert not any(name in d["description"] for d in described for name in ("bag", "sneaker", "sandal"))
    meta = (out / "meta_prompts" / "step_001.txt").read_text()
    assert f"Image_1: {described[0]['description']}" in meta
