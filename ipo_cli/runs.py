"""The run folder of `ipo optimize`: config, append-only history, meta-prompts, results.

    config.json          every setting, seeds, model identities and versions, the split
    history.jsonl        one JSON record per candidate and per finished step, appended and
                         fsync'ed as it happens, so a crash loses nothing already scored
    history.md           the same, for people: a table per step and the final ranking
    meta_prompts/        step_NNN.txt, exactly what the LLM saw
    prompts.json         best prompt and top-k (schema ipo.prompts/v1, read by ipo eval)
    templates_clip_benchmark.json   the top-k as a CLIP_benchmark template file
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError

RUN_FORMAT = 1


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.history_path = self.path / "history.jsonl"

    # ---- creating and reopening ---------------------------------------------------
    @classmethod
    def create(cls, path: Path, config: dict, force: bool = False) -> RunFolder:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not force:
                raise IpoError(f"output folder {path} already exists",
                               "pass --resume to continue that run, --force to overwrite it, or another --out")
            if not (path / "config.json").is_file():
                raise IpoError(f"--force would overwrite {path}, which is not an ipo run folder", "choose another --out")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.write_json("config.json", {"format": RUN_FORMAT, **config})
        return folder

    @classmethod
    def open(cls, path: Path) -> tuple[RunFolder, dict]:
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise IpoError(f"{path} is not an ipo run folder (no config.json)", "pass the --out folder of an earlier run")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise IpoError(f"{config_path} is corrupt: {exc}") from None
        if config.get("format") != RUN_FORMAT:
            raise IpoError(f"{path} was written by an incompatible ipo (run format {config.get('format')}, "
                           f"this ipo reads {RUN_FORMAT})", "start a new run")
        return cls(path), config

    # ---- writing --------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """One JSON line, flushed and fsync'ed: after this returns the record survives kill -9."""
        with open(self.history_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def write_meta_prompt(self, step: int, text: str) -> None:
        self.write_text(f"meta_prompts/step_{step:03d}.txt", text)

    # ---- reading --------------------------------------------------------------------
    def records(self) -> list[dict]:
        """Every complete record; a line torn by a crash mid-write is ignored."""
        if not self.history_path.is_file():
            return []
        out = []
        lines = self.history_path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:  # only an unterminated last line may be torn
                    raise IpoError(f"{self.history_path} is corrupt at line {i + 1}") from None
        if lines and lines[-1].strip():
            self._drop_torn_tail(lines)
        return out

    def _drop_torn_tail(self, lines: list[str]) -> None:
        """Cut a torn last line so the next append starts on a fresh line."""
        try:
            json.loads(lines[-1])
            with open(self.history_path, "a", encoding="utf-8") as fh:
                fh.write("\n")
        except json.JSONDecodeError:
            self.history_path.write_text("\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""), encoding="utf-8")


def compare_settings(saved: dict, requested: dict) -> list[str]:
    """Human-readable differences between a run's settings and the ones asked for now."""
    diffs = []
    for key in sorted(set(saved) | set(requested)):
        if saved.get(key) != requested.get(key):
            diffs.append(f"{key}: {saved.get(key)!r} in the run, {requested.get(key)!r} now")
    return diffs
