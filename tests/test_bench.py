"""`ipo bench` end to end: two CoOp-layout datasets x two seeds, interrupted and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import run_ipo
from servers import FakeOpenAI
from test_presets import coop_split_dataset

KEY = "sk-bench-0123456789"


def test_bench_runs_resumes_and_tabulates(tmp_path, tiny_config, tiny_checkpoint):
    data = tmp_path / "data"
    coop_split_dataset(data, "DTD", ["banded", "blotchy", "braided", "bubbly"])
    coop_split_dataset(data, "EuroSAT", ["Forest", "Highway", "River", "SeaLake"])
    out = tmp_path / "bench"
    args = ["bench", "--data-root", str(data), "--datasets", "DTD,EuroSAT", "--seeds", "1,2", "--steps", "2",
            "--candidates", "2", "--lmm", "none", "--clip", str(tiny_config), "--clip-weights",
            str(tiny_checkpoint), "--out", str(out)]
    replies = lambda p: f"<INS>a photo number {p['seed'] % 97} of a <CLASS>.</INS>"  # noqa: E731
    # 1 s a request: a cell is 2 requests (one with n a step), so the interrupt lands well before
    # the other three cells end (at 0.2 s the whole bench could finish before SIGINT arrived)
    with FakeOpenAI(key=KEY, latency=1.0, reply=replies) as api:
        args += ["--llm-url", api.url + "/v1"]
        env = {**os.environ, "IPO_API_KEY": KEY}
        proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = out / "DTD" / "seed1" / "summary.json"
        deadline = time.time() + 240
        while time.time() < deadline and not (first.exists() and "base_novel" in first.read_text()):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        finished_before = first.stat().st_mtime
        result = run_ipo(*args, env={"IPO_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert "(1 finished)" in result.stderr or "(2 finished)" in result.stderr
    assert first.stat().st_mtime == finished_before  # a finished run is not run again
    table = json.loads((out / "table.json").read_text())
    assert set(table["datasets"]) == {"DTD", "EuroSAT"}
    for row in table["datasets"].values():
        assert row["seeds"] == [1, 2] and len(row["prompts"]) == 2
        for method in ("CLIP", "IPO"):
            for key in ("base", "novel", "H"):
                assert 0 <= row[method][key]["mean"] <= 100 and row[method][key]["std"] >= 0
    assert table["average"]["datasets"] == 2
    assert table["paper_average"]["IPO"] == [71.76, 77.0, 74.29]
    markdown = (out / "table.md").read_text()
    assert "| DTD | 2 |" in markdown and "| EuroSAT | 2 |" in markdown and "71.76" in markdown
    # each cell is an ordinary run folder compared with the dataset's own CLIP template
    evaluation = json.loads((out / "EuroSAT" / "seed2" / "eval_base_novel.json").read_text())
    assert evaluation["results"][-1]["name"] == "a centered satellite photo of {}."
    # the bench's report: the table, H per dataset, a link to every run's own report
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and page.count("/report/report.html") == 4
    assert all((out / d / f"seed{s}" / "report" / "report.html").is_file() for d in ("DTD", "EuroSAT") for s in (1, 2))
    again = run_ipo("report", out)
    assert again.returncode == 0 and "bench report written" in again.stdout
