"""`ipo report`: the interpretability report of a finished run (a stand-in LLM and
captioner, a random-weight CLIP, real images), and word attribution on a planted signal."""

import json

from conftest import run_ipo, run_ipo_without_torch
from ipo_cli.explain import report as insight
from servers import FakeChatServer, FakeOpenAI

KEY = "sk-report-0123456789"


def test_attribution_finds_the_planted_word():
    def score(template):  # the loss drops only when "zebra" is present; every word costs a little
        loss = 1.0 - (0.5 if "zebra" in template else 0.0) + 0.01 * len(template.split())
        return (80.0 if "zebra" in template else 40.0), loss

    rows = insight.attribute("a striped zebra photo of a <CLASS>, taken outdoors.", score)
    assert rows[0].unit == "zebra" and rows[0].loss_change > 0.4 and rows[0].accuracy_change == 40.0
    assert all(r.loss_change < 0 for r in rows if "zebra" not in r.unit)  # other words only cost
    assert all("<CLASS>" in r.variant for r in rows)
    assert any(r.kind == "phrase" and r.unit == "taken outdoors." for r in rows)


def test_the_report_of_a_finished_run_matches_its_history(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    replies = iter(["<INS>a close photo of a <CLASS> on white.</INS>", "<INS>a <CLASS>, product shot.</INS>",
                    "<INS>a photo of one <CLASS> item.</INS>", "<INS>the <CLASS> seen from the front.</INS>"] * 5)
    with FakeOpenAI(key=KEY, reply=lambda p: next(replies)) as api, \
            FakeChatServer(lambda p: "A grey item [/] with a strap, on black.") as captioner:
        result = run_ipo("optimize", fashion_train, "--classes", fashion_train / "classes.txt", "--shots", "1",
                         "--steps", "2", "--candidates", "2", "--llm-url", api.url + "/v1", "--llm-model",
                         "gpt-4o-mini", "--lmm-url", captioner.url + "/v1", "--clip", tiny_config,
                         "--clip-weights", tiny_checkpoint, "--out", out, "--json", env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    folder = out / "report"
    for name in ("report.html", "search.png", "per_class.png", "attribution.png", "report.json"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["type"] == "candidate" and r["valid"]]
    best = max(scored, key=lambda r: (r["accuracy"], -r["loss"]))
    baseline = next(r for r in scored if r["step"] == 0)
    assert report["best"]["template"] == best["template"] and report["best"]["accuracy"] == best["accuracy"]
    deltas = {d["class"]: d["delta"] for d in report["per_class_delta"]}
    names = json.loads((out / "config.json").read_text())["train_classnames"]
    for name, b, a in zip(names, best["per_class"], baseline["per_class"]):
        assert abs(deltas[name] - (b - a)) < 1e-9
    assert report["attribution"] and all("<CLASS>" in a["variant"] for a in report["attribution"])
    by_template = {r["template"]: r for r in scored}
    for p in report["top_prompts"]:
        assert p["accuracy"] == by_template[p["template"]]["accuracy"]
    assert len(report["images"]) == 10 and report["images"][0]["description"].startswith("A grey item [/]")
    page = (folder / "report.html").read_text()
    for section in ("The search", "Per class", "Which words matter", "Top distinct prompts", "The images the loop saw"):
        assert section in page
    assert page.count("data:image/png;base64,") == 3 and "data:image/jpeg;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "A grey item [/] with a strap" in page
    # the command on the finished run: the same facts as tables, from the cache
    again = run_ipo("report", out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["attribution"] == report["attribution"]
    table = run_ipo("report", out)
    assert table.returncode == 0 and "which words matter" in table.stdout and best["template"] in table.stdout


def test_a_second_report_needs_neither_torch_nor_open_clip(tmp_path, fashion_train, tiny_config, tiny_checkpoint):
    out = tmp_path / "run"
    with FakeOpenAI(key=KEY, reply=lambda p: "<INS>a clear photo of a <CLASS>, front view.</INS>") as api:
        result = run_ipo("optimize", fashion_train, "--classes", fashion_train / "classes.txt", "--shots", "1",
                         "--steps", "1", "--candidates", "1", "--lmm", "none", "--llm-url", api.url + "/v1",
                         "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--out", out, "--json",
                         env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    first = json.loads((out / "report" / "report.json").read_text())
    warm = run_ipo_without_torch("report", out, "--json")
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)["attribution"] == first["attribution"]
