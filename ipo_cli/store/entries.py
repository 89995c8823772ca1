"""The model catalogue (models/*.json): what an entry says and reading the entries.

A catalogue entry names a GGUF model on the Hugging Face hub: repository, a pinned
revision (commit hash), the exact model file and, for a multimodal model, its projector
(mmproj) file, with their sizes and sha256 digests as public references give them (cited
in the entry), plus the llama-cpp-python chat handler that fits it. An entry may give a
glob pattern instead of a name (`file_pattern`, `mmproj_pattern`): it resolves against the
hub's listing by a fixed preference (`MODEL_PREFERENCE`, `MMPROJ_PREFERENCE`, applied in
store/hub.py), and `pull` says which file it chose.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in

HANDLERS = ("llava-1-5", "llava-1-6", "moondream", "nanollava", "minicpm-v-2.6", "qwen2.5-vl", "mtmd")
# How a pattern that matches several files resolves: the first quantisation named here
# that one of the matches carries (case-insensitive), else the alphabetically first match.
MODEL_PREFERENCE = ("Q4_K_M", "Q4_K", "Q4_K_S", "Q5_K_M", "Q8_0", "F16", "BF16", "F32")
MMPROJ_PREFERENCE = ("Q8_0", "F16", "BF16", "F32")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CatalogueEntry:
    name: str
    kind: str  # llm | lmm
    note: str
    license: str
    source: dict[str, str]
    n_ctx: int = 4096
    handler: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {size, sha256}, where published
    cite: list[str] = field(default_factory=list)
    default_for: list[str] = field(default_factory=list)  # "cpu" and/or "gpu": the default on such a machine

    @property
    def repo(self) -> str:
        return self.source["repo"]

    @property
    def revision(self) -> str:
        return self.source.get("revision", "main")

    @property
    def size(self) -> int | None:
        sizes = [f.get("size") for f in self.files.values()]
        counted = [n for n in sizes if isinstance(n, int)]
        return sum(counted) if sizes and len(counted) == len(sizes) else None

    @property
    def pinned(self) -> bool:
        """Exact files at a commit, each with a published sha256."""
        roles = ["model"] + (["mmproj"] if self.kind == "lmm" else [])
        return bool(re.fullmatch(r"[0-9a-f]{40}", self.revision)) and all(
            self.source.get("file" if r == "model" else r) and
            SHA256_HEX.match(str((self.files.get(r) or {}).get("sha256", ""))) for r in roles)


def _catalogue_dirs() -> list[Path]:
    """The shipped catalogue, then any folders in IPO_CATALOGUE_DIR (os.pathsep-separated)."""
    here = Path(__file__).resolve().parent.parent
    # An installed wheel carries models/ as ipo_cli/catalogue_data; a source checkout
    # (editable install) has it beside the package.
    dirs = [d for d in (here / "catalogue_data", here.parent / "models") if d.is_dir()][:1]
    extra = os.environ.get("IPO_CATALOGUE_DIR")
    if extra:
        dirs.extend(Path(p) for p in extra.split(os.pathsep) if p)
    return dirs


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def check_name(name: str, what: str = "model name") -> str:
    """Names become folder names in the store: letters, digits, `.`, `_`, `+`, `-` only."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise IpoError(f"{what} {name!r} is not allowed",
                       "use 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit")
    return name


def _entry_problem(data: Any) -> str | None:
    """The first thing wrong with a catalogue entry, or None."""
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not an object"
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        return f"'name' {name!r} is not a plain model name"
    if data.get("kind") not in ("llm", "lmm"):
        return f"'kind' must be llm or lmm, not {data.get('kind')!r}"
    source = data.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("repo"), str) or \
            not re.fullmatch(r"[\w.-]+/[\w.-]+", source["repo"]):
        return "'source.repo' must be ORG/NAME"
    if not isinstance(source.get("revision", "main"), str) or not re.fullmatch(r"[\w.-]+", source.get("revision", "main")):
        return "'source.revision' must be a branch or commit"
    roles = [("file", "file_pattern")] + ([("mmproj", "mmproj_pattern")] if data["kind"] == "lmm" else [])
    for exact, pattern in roles:
        value = source.get(exact) or source.get(pattern)
        if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/"):
            return f"'source.{exact}' (or {pattern}) must name a file in the repository"
    files = data.get("files", {})
    if not isinstance(files, dict) or any(
            not isinstance(v, dict) or not (v.get("size") is None or isinstance(v.get("size"), int))
            or not SHA256_HEX.match(str(v.get("sha256", ""))) for v in files.values()):
        # size null: no public source gives the byte count (the hub's listing does, at pull)
        return "'files' must map roles to {size: int or null, sha256: 64 hex digits}"
    if not isinstance(data.get("n_ctx", 4096), int) or data.get("n_ctx", 4096) < 256:
        return "'n_ctx' must be an integer of at least 256"
    if data.get("handler") is not None and data.get("handler") not in HANDLERS:
        return f"'handler' must be one of {', '.join(HANDLERS)}"
    return None


def load_catalogue() -> dict[str, CatalogueEntry]:
    entries: dict[str, CatalogueEntry] = {}
    for folder in _catalogue_dirs():
        for path in sorted(folder.glob("*.json")):
            data = json_in.read_json(path, "catalogue file")
            problem = _entry_problem(data)
            if problem:
                raise IpoError(f"catalogue file {path} is malformed: {problem}")
            try:
                entry = CatalogueEntry(**data)
            except TypeError as exc:
                raise IpoError(f"catalogue file {path} is malformed: {exc}") from None
            entries[entry.name] = entry
    return entries


def default_model(kind: str, machine: str = "cpu") -> CatalogueEntry:
    """The catalogue's default LLM or LMM for a machine: "cpu" or "gpu" (see hardware.py)."""
    for entry in load_catalogue().values():
        if entry.kind == kind and machine in entry.default_for:
            return entry
    raise IpoError(f"the catalogue names no default {kind} for a {machine} machine")
