"""The in-process describer through real llama.cpp: a tiny random-weight LLaVA-style
projector written at test time (tests/projectors.py) beside SmolLM2-135M, through
llama-cpp-python's Llava15ChatHandler and its generic MTMDChatHandler. The captions are
noise, of course; what is tested is that they come back for every image, are cached by
image, model, projector and instruction, reach the meta-prompt, and that every failure of
the handler, the template or llama.cpp is a one-line message of ours."""

import json
import shutil

import pytest
from conftest import run_ipo
from projectors import copy_with_chat_template, write_llava_projector


@pytest.fixture(scope="session")
def projector(tmp_path_factory):
    return write_llava_projector(tmp_path_factory.mktemp("mmproj") / "tiny-llava-mmproj.gguf")


@pytest.fixture(scope="session")
def other_projector(tmp_path_factory):
    """Same shape, other random weights: another projector for the same model."""
    return write_llava_projector(tmp_path_factory.mktemp("mmproj") / "tiny-llava-mmproj-2.gguf", seed=1)


@pytest.fixture(scope="session")
def smollm_parts(smollm, tmp_path_factory):
    """SmolLM2-135M with a chat template that takes content parts (images included)."""
    return copy_with_chat_template(smollm, tmp_path_factory.mktemp("parts") / "smollm2-parts.gguf")


@pytest.fixture(scope="session")
def few_images(fashion_train, tmp_path_factory):
    flat = tmp_path_factory.mktemp("few")
    for p in sorted(fashion_train.rglob("*.png"))[:3]:
        shutil.copy(p, flat / f"{p.parent.name.replace(' ', '_')}-{p.name}")
    return flat


def describe(images, model, mmproj, handler, *extra):
    result = run_ipo("describe", images, "--lmm", model, "--mmproj", mmproj, "--handler", handler,
                     "--max-tokens", "6", "--json", *extra)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result, lines[:-1], (lines[-1] if lines else {})


def test_llava15_handler_captions_every_image_and_caches_by_all_it_depends_on(
        smollm, projector, other_projector, few_images):
    first, captions, tail = describe(few_images, smollm, projector, "llava-1-5")
    assert first.returncode == 0, first.stderr
    assert tail["summary"]["captioned"] == 3 and tail["summary"]["failed"] == 0
    assert [c["path"] for c in captions] == [str(p) for p in sorted(few_images.iterdir())]
    assert all(isinstance(c["raw"], str) and c["raw"].strip() for c in captions)
    assert tail["summary"]["model"].endswith(":llava-1-5")  # model and projector digests, and the handler
    again = describe(few_images, smollm, projector, "llava-1-5")[2]
    assert again["summary"]["from_cache"] == 3
    other_instruction = describe(few_images, smollm, projector, "llava-1-5", "--prompt", "List the colours.")[2]
    assert other_instruction["summary"]["from_cache"] == 0
    other_proj = describe(few_images, smollm, other_projector, "llava-1-5")[2]
    assert other_proj["summary"]["from_cache"] == 0 and other_proj["summary"]["model"] != tail["summary"]["model"]


def test_mtmd_handler_with_a_template_that_takes_image_parts(smollm_parts, projector, few_images):
    result, captions, tail = describe(few_images, smollm_parts, projector, "mtmd")
    assert result.returncode == 0, result.stderr
    assert tail["summary"]["captioned"] == 3 and len(captions) == 3
    assert tail["summary"]["model"].endswith(":mtmd")


def test_a_template_that_cannot_take_images_is_refused_before_any_image(smollm, projector, few_images):
    """SmolLM2's own template concatenates content as a string: with MTMDChatHandler every
    image would fail with a TypeError (it did: "unexpected TypeError")."""
    result, captions, _ = describe(few_images, smollm, projector, "mtmd")
    assert result.returncode == 2
    assert "cannot take image parts" in result.stderr and "--handler" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and captions == []


def test_a_projector_of_the_wrong_width_is_one_line_before_any_image(smollm, tmp_path, few_images):
    narrow = write_llava_projector(tmp_path / "narrow-mmproj.gguf", n_out=64)  # SmolLM2's n_embd is 576
    result, captions, _ = describe(few_images, smollm, narrow, "llava-1-5")
    assert result.returncode == 2 and captions == []
    assert "n_embd, 576" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_failure_while_captioning_one_image_skips_it_and_every_image_is_an_error(
        smollm, projector, few_images, monkeypatch):
    import llama_cpp

    real = llama_cpp.Llama.create_chat_completion
    second = sorted(few_images.iterdir())[1]
    seen = []

    def flaky(self, messages, **kwargs):
        seen.append(1)
        if len(seen) == 2:  # the second image: as llama.cpp's decode failing would
            raise RuntimeError("llama_decode returned -1")
        return real(self, messages=messages, **kwargs)

    monkeypatch.setattr(llama_cpp.Llama, "create_chat_completion", flaky)
    result, captions, tail = describe(few_images, smollm, projector, "llava-1-5", "--prompt", "Flaky.")
    assert result.returncode == 0, result.stderr
    assert tail["summary"]["captioned"] == 2 and tail["failed"][0]["path"] == str(second)
    assert "RuntimeError: llama_decode returned -1" in tail["failed"][0]["reason"]
    assert second.name in result.stderr and "Traceback" not in result.stderr

    def broken(self, messages, **kwargs):
        raise TypeError("can only concatenate str (not \"list\") to str")

    monkeypatch.setattr(llama_cpp.Llama, "create_chat_completion", broken)
    result, captions, _ = describe(few_images, smollm, projector, "llava-1-5", "--prompt", "Broken.")
    assert result.returncode == 2 and captions == []
    assert "could not describe any of the 3 image(s)" in result.stderr and "TypeError" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_optimize_with_the_in_process_describer(smollm, projector, fashion_train, tiny_config, tiny_checkpoint,
                                                tmp_path):
    data = tmp_path / "two"
    for name in ("bag", "sneaker"):
        shutil.copytree(fashion_train / name, data / name)
    (data / "classes.txt").write_text("bag\nsneaker\n")
    out = tmp_path / "run"
    result = run_ipo("optimize", data, "--classes", data / "classes.txt", "--shots", "1", "--steps", "1",
                     "--candidates", "1", "--llm", smollm, "--n-ctx", "2048", "--lmm", smollm, "--mmproj", projector,
                     "--handler", "llava-1-5", "--clip", tiny_config, "--clip-weights", tiny_checkpoint,
                     "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["models"]["lmm"].endswith(":llava-1-5")
    described = config["descriptions"]
    assert len(described) == 2 and all(d["description"].strip() for d in described)
    meta = (out / "meta_prompts" / "step_001.txt").read_text()
    for i, d in enumerate(described, start=1):
        assert f"Image_{i}: {d['description']}".strip() in meta
