"""Captioning: payloads checked against a local OpenAI-compatible server (no multimodal
weights exist on this machine), the real caption cache, redaction and the CLI."""

import base64
import io
import json
import shutil

from PIL import Image

from conftest import run_ipo
from ipo_cli import cache
from ipo_cli.llm import captions as describe
from servers import FakeChatServer


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
    from ipo_cli.optimize import job

    request = job.Request(images="x", seed=3, n_ctx=4096)
    chosen = job.described_subset(request, {"llm": "x"}, 200)
    assert 20 <= len(chosen) < 200 and chosen == sorted(chosen)
    assert chosen == job.described_subset(request, {"llm": "x"}, 200)  # seeded
    assert chosen != job.described_subset(job.Request(images="x", seed=4, n_ctx=4096), {"llm": "x"}, 200)
    bigger = job.described_subset(job.Request(images="x", seed=3, n_ctx=16384), {"llm": "x"}, 200)
    assert len(bigger) > len(chosen)
    assert job.described_subset(request, {"llm": "x"}, 10) == list(range(10))  # all fit
