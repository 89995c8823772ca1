"""The run folder of `ipo optimize`: config, append-only history, meta-prompts, results.

    config.json          every setting, seeds, model identities and versions, the split
    history.jsonl        one JSON record per candidate and per finished step, appended and
                         fsync'ed as it happens, so a crash loses nothing already scored
    history.md           the same, for people: a table per step and the final ranking
    meta_prompts/        step_NNN.txt, exactly what the LLM saw
    prompts.json         best prompt and top-k (schema ipo.prompts/v1, read by ipo eval)
    templates_clip_benchmark.json   the top-k as a CLIP_benchmark template file
    .ipo-run             the marker that makes a folder ipo's own (`--force` replaces
                         nothing else)
    .lock                held by the process that writes the run (a second one is refused)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in, paths

RUN_FORMAT = 1
MARKER = ".ipo-run"
# What every history record must hold, by type (the loop reads these on resume).
RECORD_FIELDS = {
    "candidate": {"step": int, "attempt": int, "index": int, "valid": bool, "template": (str, type(None))},
    "step": {"step": int, "improved": bool, "best_accuracy": (int, float), "best_loss": (int, float)},
}
SCORED_FIELDS = {"accuracy": (int, float), "loss": (int, float), "template": str}


@dataclass
class SavedConfig:
    """The fields of config.json that ipo reads back (optimize/job.py writes them), by
    type. `RunFolder.open` checks each present one (gates/typed.py), so that resume,
    `ipo report` and bench get values of these types: "train_classnames": "abc" is not
    the classes a, b, c, and a split entry is [path, label]."""

    request: dict[str, Any]
    models: dict[str, Any]
    classnames: list[str]
    train_classnames: list[str]
    split: dict[str, list[tuple[str, int]]]
    descriptions: list[dict[str, Any]]
    versions: dict[str, Any]
    ipo_version: str
    created: str


def is_run_folder(path: Path) -> bool:
    """True only for a folder that ipo created as a run (its marker names the run format)."""
    try:
        marker = json_in.read_json(Path(path) / MARKER, "run marker")
    except IpoError:
        return False
    return isinstance(marker, dict) and marker.get("ipo_run_format") == RUN_FORMAT


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.history_path = self.path / "history.jsonl"
        self._lock: Any = None

    # ---- creating and reopening ---------------------------------------------------
    @classmethod
    def check_target(cls, path: Path, force: bool = False) -> None:
        """Everything `create` would refuse, checked before any work is done."""
        path = paths.check_out_folder(path, "--out")  # no link, device or FIFO (gates/paths.py)
        if path.exists() and not path.is_dir():
            raise IpoError(f"--out {path} is a file, not a folder", "choose another --out")
        if path.exists() and any(path.iterdir()):
            if not force:
                raise IpoError(f"output folder {path} already exists",
                               "pass --resume to continue that run, --force to overwrite it, or another --out")
            if not is_run_folder(path):
                raise IpoError(f"--force would delete {path}, which ipo did not create as a run folder "
                               f"(no {MARKER} marker)", "choose another --out; ipo deletes only its own runs")
            probe = cls(path)
            probe.lock()  # never delete a run another process is writing
            probe.unlock()
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise IpoError(f"--out {path}: {parent} is a file, not a folder", "choose another --out")
                break

    @classmethod
    def create(cls, path: Path, config: dict, force: bool = False) -> RunFolder:
        path = Path(path)
        cls.check_target(path, force)
        if path.exists() and any(path.iterdir()):  # an ipo run, not in use, and --force
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.lock()
        folder.write_json(MARKER, {"ipo_run_format": RUN_FORMAT})
        folder.write_json("config.json", {"format": RUN_FORMAT, **config})
        return folder

    def lock(self) -> None:
        """Hold the run: a second process that tries gets a one-line error naming the first."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = self.path / ".owner"
            pid = owner.read_text().strip() if owner.is_file() else "?"
            raise IpoError(f"another ipo process (pid {pid}) is writing the run {self.path}",
                           "wait for it to finish, or stop it first") from None
        self._lock = lock
        (self.path / ".owner").write_text(str(os.getpid()))

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @classmethod
    def open(cls, path: Path, lock: bool = False) -> tuple[RunFolder, dict]:
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise IpoError(f"{path} is not an ipo run folder (no config.json)", "pass the --out folder of an earlier run")
        try:
            config = json_in.read_json(config_path, "run config")
        except IpoError as exc:
            raise IpoError(f"{config_path} is corrupt: {exc.message}", "restore it, or start a new run") from None
        if not isinstance(config, dict):
            raise IpoError(f"{config_path} is corrupt: a {type(config).__name__}, not an object")
        from ipo_cli.gates.typed import check_fields

        check_fields(config, SavedConfig, f"{config_path} is corrupt", "restore it, or start a new run",
                     prefix="the field")
        if config.get("format") != RUN_FORMAT:
            raise IpoError(f"{path} was written by an incompatible ipo (run format {config.get('format')}, "
                           f"this ipo reads {RUN_FORMAT})", "start a new run")
        folder = cls(path)
        if lock:
            folder.lock()
        return folder, config

    # ---- writing --------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """One JSON line in a single write, fsync'ed: after this returns the record survives
        kill -9, and a crash mid-write leaves at most a torn last line (dropped on resume)."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write (rare): finish the line
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

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
        """Every complete record, checked; a line torn by a crash mid-write (even inside a
        UTF-8 character) is dropped. Anything else malformed is a one-line error naming the
        line."""
        if not self.history_path.is_file():
            return []
        out = []
        lines = self.history_path.read_bytes().split(b"\n")
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                record = json_in.loads(raw, f"line {i + 1}")
            except IpoError as exc:
                if i == len(lines) - 1:  # only an unterminated last line may be torn
                    self._drop_torn_tail(lines)
                    break
                raise IpoError(f"{self.history_path} is corrupt at line {i + 1}: {exc.message}",
                               "restore it, or start a new run") from None
            problem = check_record(record)
            if problem:
                raise IpoError(f"{self.history_path} line {i + 1}: {problem}", "restore it, or start a new run")
            out.append(record)
        else:
            if lines and lines[-1].strip():  # complete but unterminated: end the line
                with open(self.history_path, "ab") as fh:
                    fh.write(b"\n")
        return out

    def _drop_torn_tail(self, lines: list[bytes]) -> None:
        """Cut a torn last line so the next append starts on a fresh line."""
        self.history_path.write_bytes(b"\n".join(lines[:-1]) + (b"\n" if len(lines) > 1 else b""))


def check_record(record: Any) -> str | None:
    """What is wrong with one history record, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a record"
    kind_of = record.get("type")
    fields = RECORD_FIELDS.get(kind_of) if isinstance(kind_of, str) else None
    if fields is None:
        return f"unknown record type {str(kind_of)[:40]!r}"
    needed: dict[str, Any] = dict(fields)
    if record.get("type") == "candidate" and record.get("valid"):
        needed.update(SCORED_FIELDS)
    for name, kind in needed.items():
        if name not in record:
            return f"a {record['type']} record without {name!r}"
        value = record[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
            return f"{name!r} is {str(value)[:40]!r}"
        if isinstance(value, float) and not math.isfinite(value):  # json reads NaN and Infinity
            return f"{name!r} is {value}, not a finite number"
        if name in ("accuracy", "best_accuracy") and not 0 <= value <= 100:
            return f"{name!r} is {value}, not a percentage from 0 to 100"
    return None


def compare_settings(saved: dict, requested: dict) -> list[str]:
    """Human-readable differences between a run's settings and the ones asked for now."""
    diffs = []
    for key in sorted(set(saved) | set(requested)):
        if saved.get(key) != requested.get(key):
            diffs.append(f"{key}: {saved.get(key)!r} in the run, {requested.get(key)!r} now")
    return diffs
