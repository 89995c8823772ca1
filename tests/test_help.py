"""`ipo CMD --help`: options grouped in panels, printed without rich's layout or pydantic."""

import subprocess
import sys

import pytest

from conftest import run_ipo

PANELS = {
    "optimize": {"Data": ["--classes", "--shots"], "Loop": ["--steps", "--candidates", "--budget"],
                 "Models": ["--llm", "--lmm", "--gpu-layers"], "CLIP": ["--clip", "--device"],
                 "Output": ["--out", "--resume", "--json"]},
    "eval": {"Data": ["--images", "--split-part"], "CLIP": ["--clip", "--batch-size"], "Output": ["--out", "--format"]},
    "bench": {"Data": ["--data-root", "--seeds"], "Loop": ["--budget", "--steps"], "Models": ["--llm"],
              "CLIP": ["--clip"], "Output": ["--out"]},
    "classify": {"Data": ["--prompts", "--classes"], "CLIP": ["--clip"], "Output": ["--top-k", "--out"]},
    "describe": {"Data": ["--classes"], "Models": ["--lmm", "--max-tokens", "--gpu-layers"], "Output": ["--out"]},
}


def sections(help_text: str) -> dict[str, str]:
    """The help's sections by title ("Data:" ... up to the next title line)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


@pytest.mark.parametrize("command", sorted(PANELS))
def test_options_are_grouped_in_panels(command):
    result = run_ipo(command, "--help")
    assert result.returncode == 0, result.stderr
    found = sections(result.stdout)
    titles = [t for t in found if t not in ("Usage", "Arguments")]
    assert titles[-1] == "Options" and "--help" in found["Options"]  # only --help is left over, last
    for panel, flags in PANELS[command].items():
        assert panel in found, f"{command} --help has no {panel} panel"
        for flag in flags:
            assert f"  {flag} " in found[panel] or f"  {flag}\n" in found[panel] + "\n", (command, panel, flag)
            others = [t for t in titles if t != panel]
            assert not any(f"  {flag} " in found[t] for t in others), (command, flag)


def test_help_imports_neither_pydantic_nor_rich_nor_heavy_libraries():
    code = ("import sys; sys.argv = ['ipo', 'optimize', '--help']\n"
            "from ipo_cli.entry import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('pydantic', 'typer.rich_utils', 'rich', 'rich.console', 'torch', 'open_clip', 'numpy', 'llama_cpp')\n"
            "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage: ipo optimize" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_a_bad_option_is_still_one_line_and_exit_2():
    result = run_ipo("optimize", "--steps", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--steps" in result.stderr and "optimize --help)" in result.stderr
