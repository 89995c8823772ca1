"""`ipo report`: why the prompt works."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ipo_cli.cli.console import out, status
from ipo_cli.cli.options import CacheDirOpt, DeviceOpt, ImageLoadingOpt, JsonOpt
from ipo_cli.cli.output import show

# ---- ipo report -------------------------------------------------------------------

def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder of ipo optimize.")],
    device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None,
    image_loading: ImageLoadingOpt = None,  # default: the run's own (config.json)
    as_json: JsonOpt = False,
) -> None:
    """Why the prompt works: the search, per-class changes, word attribution, top prompts, images.

    The run's images are decoded as the run decoded them (its config.json) unless
    --image-loading says otherwise."""
    from ipo_cli.data.folders import check_image_loading
    from ipo_cli.explain import report as insight

    if image_loading is not None:
        check_image_loading(image_loading)

    if insight.is_bench(run):
        bench = insight.write_bench(run)
        show({"report": str(bench)}, as_json, lambda _: out.print(f"bench report written: {bench}"))
        return
    with status("scoring the run's prompts on its cached embeddings"):
        report = insight.build(run, cache_dir, device, image_loading=image_loading)
    written = insight.write(report, run / "report")
    show(report.to_json(), as_json, lambda _: _render_report(report, written))


def _render_report(report: Any, written: list[Path]) -> None:
    from rich.table import Table
    from rich.text import Text

    b, base = report.best, report.baseline
    out.print(Text.assemble(("final prompt: ", "bold"), b["template"],
                            f"  (accuracy {b['accuracy']:.2f}, loss {b['loss']:.4f}; baseline {base['accuracy']:.2f}, "
                            f"{base['loss']:.4f}; {len(report.steps) - 1} steps, {len(report.candidates) - 1} scored prompts)"))
    words = Table(title="which words matter (dropped one at a time)")
    for col in ("dropped", "kind", "loss change (> 0: it helps)", "accuracy change"):
        words.add_column(col)
    for a in report.attribution:
        words.add_row(a.unit, a.kind, f"{a.loss_change:+.4f}", f"{a.accuracy_change:+.2f}")
    out.print(words)
    classes = Table(title="per class: final minus baseline training accuracy")
    classes.add_column("class")
    classes.add_column("change", justify="right")
    for name, delta in report.per_class_delta:
        classes.add_row(name, Text(f"{delta:+.1f}", style="green" if delta > 0 else "red" if delta < 0 else ""))
    out.print(classes)
    top = Table(title="top distinct prompts")
    for col in ("prompt", "accuracy", "loss"):
        top.add_column(col)
    for p in report.top_prompts:
        top.add_row(p["template"], f"{p['accuracy']:.2f}", f"{p['loss']:.4f}")
    top.add_row(f"ensemble of these {len(report.ensemble['templates'])}", f"{report.ensemble['accuracy']:.2f}",
                f"{report.ensemble['loss']:.4f}")
    out.print(top)
    if report.confusions:
        confusions = Table(title="confusions that changed most (training images)")
        for col in ("true class", "predicted as", "baseline", "final"):
            confusions.add_column(col)
        for c in report.confusions:
            confusions.add_row(c["true"], c["predicted"], str(c["baseline"]), str(c["final"]))
        out.print(confusions)
    out.print(f"report written: {written[0]}")
