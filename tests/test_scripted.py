"""The real `ipo optimize`, in process, with a scripted LLM and describer registered
(ipo_cli.llm.registry), as simonw/llm's tests run its CLI against a registered MockModel."""

import json

import pytest

from conftest import run_ipo
from ipo_cli.errors import IpoError
from ipo_cli.llm import registry
from scripted import ScriptedDescriber, ScriptedLLM, scripted


def optimize(data, tiny_config, tiny_checkpoint, out, *extra):
    return run_ipo("optimize", data, "--classes", data / "classes.txt", "--shots", "1", "--steps", "2",
                   "--candidates", "2", "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out,
                   "--json", *extra)


def test_optimize_runs_on_a_registered_llm_and_describer(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    llm = ScriptedLLM(reply=lambda messages, seed: f"<INS>A photo number {seed % 7} of a <CLASS>.</INS>")
    describer = ScriptedDescriber(reply=lambda uri: "a dark shape with two straps")
    llm.enqueue(["<INS>A sharp photo of a <CLASS>.</INS>"])
    with scripted(llm, describer):
        result = optimize(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "run",
                          "--llm", "scripted:planner", "--lmm", "scripted:eyes")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["plan"]["llm_where"] == summary["plan"]["lmm_where"] == "a registered backend"
    assert summary["models"]["llm"] == "scripted:scripted" and summary["models"]["lmm"] == "scripted:scripted"
    assert len(llm.history) == 4 and len(describer.seen) == summary["plan"]["captions"] > 0
    shown = "\n".join(m["content"] for m in llm.history[0]["messages"])
    assert "a dark shape with two straps" in shown and llm.history[0]["grammar"]  # descriptions and the grammar
    prompts = [r["template"] for r in map(json.loads, (tmp_path / "run" / "history.jsonl").read_text().splitlines())
               if r.get("type") == "candidate"]
    assert "A sharp photo of a <CLASS>." in prompts  # the queued answer came first
    assert "scripted" not in registry.registered("llm")  # unregistered again


def test_an_llm_returning_nothing_valid_is_reported(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    """Formerly through an HTTP stand-in; the loop's handling does not depend on transport."""
    with scripted(ScriptedLLM(reply=lambda messages, seed: "Sure! Here is a prompt: photos.")):
        result = optimize(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "run",
                          "--llm", "scripted:chatty", "--lmm", "none")
    assert result.returncode == 2
    assert "returned no valid prompt" in result.stderr and "Sure! Here is a prompt" in result.stderr


def test_a_scheme_is_only_a_registered_one():
    assert registry.lookup("qwen2.5-1.5b") is None and registry.lookup("scripted:x") is None
    with scripted(ScriptedLLM()):
        assert registry.lookup("scripted:x") is not None and registry.lookup("other:x") is None
        with pytest.raises(IpoError, match="names no scripted model"):
            registry.lookup("scripted:")
    with pytest.raises(ValueError):
        registry.register("not a name", lambda name: None)
