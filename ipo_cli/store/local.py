"""The local model store: the manifest, `models add`, `models rm`, and finding a model's files.

The store lives under `IPO_HOME` (default: the user data directory) in `models/`, with a
`manifest.json` recording name, paths, sha256, size and when each model was pulled or
added. The user's own Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub`,
~/.cache/huggingface/hub) is read here too: `pull` uses a file found there in place.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ipo_cli.cache import sha256_file
from ipo_cli.errors import IpoError, close_matches, shown
from ipo_cli.gates import json_in, paths
from ipo_cli.store.entries import HANDLERS, check_name, load_catalogue

GGUF_MAGIC = b"GGUF"


def home() -> Path:
    env = os.environ.get("IPO_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("ipo", appauthor=False))


def models_dir() -> Path:
    return home() / "models"


@dataclass
class LocalModel:
    """A model on disk: pulled from the catalogue or added by the user."""

    name: str
    kind: str
    files: dict[str, dict[str, Any]]  # role ("model", "mmproj") -> {path, sha256, size}
    handler: str | None = None
    n_ctx: int = 4096
    source: str = "added"  # "catalogue" or "added"
    when: str = ""

    @property
    def path(self) -> Path:
        return Path(self.files["model"]["path"])

    @property
    def mmproj(self) -> Path | None:
        return Path(self.files["mmproj"]["path"]) if "mmproj" in self.files else None

    @property
    def identity(self) -> str:
        """Name plus content hash: what cache keys and run configs record."""
        digests = "+".join(self.files[r]["sha256"][:16] for r in sorted(self.files))
        return f"{self.name}@{digests}"


class Manifest:
    def __init__(self, root: Path | None = None):
        self.root = root or models_dir()
        self.path = self.root / "manifest.json"

    def load(self) -> dict[str, LocalModel]:
        if not self.path.is_file():
            return {}
        hint = "fix or delete it, then pull or add the models again"
        data = json_in.read_json(self.path, "model manifest", hint)
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise IpoError(f"model manifest {self.path} is corrupt: not {{\"models\": {{...}}}}", hint)
        models = {}
        for name, entry in data.get("models", {}).items():
            problem = _manifest_problem(name, entry)
            if problem:
                raise IpoError(f"model manifest {self.path} is corrupt at {name!r}: {problem}", hint)
            try:
                models[name] = LocalModel(**entry)
            except TypeError as exc:
                raise IpoError(f"model manifest {self.path} is corrupt at {name!r}: {exc}", hint) from None
        return models

    def save(self, models: dict[str, LocalModel]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "models": {n: asdict(m) for n, m in sorted(models.items())}}, indent=2))
        tmp.replace(self.path)

    def put(self, model: LocalModel) -> None:
        models = self.load()
        models[model.name] = model
        self.save(models)

    def remove(self, name: str) -> LocalModel:
        models = self.load()
        if name not in models:
            raise IpoError(f"model {name!r} is not installed." + close_matches(name, list(models)))
        model = models.pop(name)
        self.save(models)
        return model


def _manifest_problem(name: Any, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    if entry.get("kind") not in ("llm", "lmm"):
        return f"kind {entry.get('kind')!r}"
    files = entry.get("files")
    if not isinstance(files, dict) or "model" not in files:
        return "no model file record"
    for role, record in files.items():
        if not (isinstance(record, dict) and isinstance(record.get("path"), str)
                and isinstance(record.get("sha256"), str) and isinstance(record.get("size"), int)):
            return f"the {role} record needs path, sha256 and size"
    if not isinstance(entry.get("n_ctx", 4096), int):
        return "n_ctx is not an integer"
    return None


def check_gguf(path: Path, what: str = "model file") -> None:
    """A one-line error for a missing, truncated or non-GGUF file: the file must reach the
    end of the tensor data its own header describes (store/gguf_extent.py)."""
    from ipo_cli.store import gguf_extent

    path = paths.check_path(path, what, must_exist=True, kind="file")  # a folder or a FIFO: said as such
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise IpoError(f"{what} {path} is not a GGUF file", "llama.cpp reads .gguf files; convert or re-download it")
    try:
        end, size = gguf_extent.data_end(path)
    except gguf_extent.Malformed as exc:
        raise IpoError(f"{what} {path} is truncated or damaged: {exc}", "download it again") from None
    if size < end:
        raise IpoError(f"{what} {path} is truncated: its header describes {end} bytes, the file has {size}",
                       "download it again (or finish the download)")


def add_model(name: str, file: Path, kind: str, mmproj: Path | None = None, handler: str | None = None,
              n_ctx: int = 4096, force: bool = False) -> LocalModel:
    """Register a GGUF the user already has; the file stays where it is. An existing name,
    or a catalogue name (which every command would then resolve to the user's file), needs
    `force`."""
    check_name(name)
    if not force:
        if name in Manifest().load():
            raise IpoError(f"a model named {name!r} is already installed", "pass --force to replace it, or pick another name")
        if name in load_catalogue():
            raise IpoError(f"{name!r} is a catalogue model; adding your file under that name would make every "
                           "command that names it use your file", "pick another name, or pass --force")
    if not 256 <= n_ctx <= 10_000_000:
        raise IpoError(f"--n-ctx must be from 256 to 10000000, not {n_ctx}")
    if kind not in ("llm", "lmm"):
        raise IpoError(f"--kind must be llm or lmm, not {kind!r}")
    check_gguf(file)
    if kind == "lmm":
        if mmproj is None:
            raise IpoError("a multimodal model needs its projector file", "pass --mmproj FILE.gguf")
        check_gguf(mmproj, "mmproj file")
        handler = handler or "mtmd"
    if handler is not None and handler not in HANDLERS:
        raise IpoError(f"unknown chat handler {handler!r}" + close_matches(handler, list(HANDLERS)),
                       f"choose one of {', '.join(HANDLERS)}")
    if kind == "llm" and (mmproj is not None or handler is not None):
        raise IpoError("--mmproj and --handler are for multimodal models (--kind lmm)")
    files = {"model": _file_record(Path(file))}
    if mmproj is not None:
        files["mmproj"] = _file_record(Path(mmproj))
    model = LocalModel(name, kind, files, handler, n_ctx, "added", now())
    Manifest().put(model)
    return model


def _file_record(path: Path) -> dict[str, Any]:
    path = path.resolve()
    return {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve(name_or_path: str, kind: str, mmproj: Path | None = None) -> LocalModel:
    """A model by catalogue/store name or by GGUF path, with one-line errors."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf") or path.is_file():
        check_gguf(path)
        if kind == "lmm":
            if mmproj is None:
                raise IpoError(f"the multimodal model {path} needs its projector", "pass --mmproj FILE.gguf")
            check_gguf(mmproj, "mmproj file")
        files = {"model": _file_record(path)}
        if mmproj is not None:
            files["mmproj"] = _file_record(Path(mmproj))
        return LocalModel(path.stem, kind, files, "mtmd" if kind == "lmm" else None, source="file")
    installed = Manifest().load()
    if name_or_path in installed:
        model = installed[name_or_path]
        if model.kind != kind:
            raise IpoError(f"model {name_or_path!r} is an {model.kind}, not an {kind}")
        check_files(model)
        return model
    catalogue = load_catalogue()
    if name_or_path in catalogue:
        raise IpoError(f"model {name_or_path!r} is not pulled yet", f"run: ipo models pull {name_or_path}")
    raise IpoError(
        f"unknown model {name_or_path!r}" + close_matches(name_or_path, list(catalogue) + list(installed)),
        "see: ipo models list",
    )



def check_files(model: LocalModel) -> None:
    """Every file of an installed model still there; the fix named by where it came from
    (a pulled model is pulled again, a file the user added is theirs to put back)."""
    for role, record in model.files.items():
        if not Path(record["path"]).is_file():
            fix = f"run: ipo models pull {model.name}" if model.source == "catalogue" else \
                f"put the file back, or register it again: ipo models add {model.name} --file FILE --kind {model.kind} --force"
            raise IpoError(f"the {role} file of {model.name!r} is missing: {record['path']}", fix)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def find_in_hf_cache(repo: str, revision: str, filename: str) -> Path | None:
    """The file as `hf download`, llama.cpp's -hf or transformers left it in the hub cache
    (models--ORG--NAME/snapshots/REVISION/FILE), for exactly this revision."""
    from huggingface_hub import try_to_load_from_cache

    # A hub listing names the file; one that leaves the repository (`..`, an absolute, drive
    # or UNC path) is refused here in one line. huggingface_hub refuses it too, with a
    # ValueError ("Invalid filename ...": huggingface_hub 2.4 src/huggingface_hub/_local_folder.py
    # `_validate_relative_filename`, called first by file_download.py `try_to_load_from_cache`),
    # which is mapped to one line as well.
    if _leaves_repo(filename):
        raise IpoError(f"the hub's file list of {repo}@{revision} names the file {shown(filename)}, "
                       "a path that leaves the repository; ipo fetches no such file", "is HF_ENDPOINT a hub?")
    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision)
    except ValueError as exc:
        raise IpoError(f"the file {shown(filename)} of {repo}@{revision} cannot be looked up in your Hugging Face "
                       f"cache: {shown(str(exc), 120)}", "is HF_ENDPOINT a hub?") from None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None

def _leaves_repo(filename: str) -> bool:
    """A repository path with a `..` segment, or anchored under POSIX or Windows rules (`/x`,
    `C:x`, `\\\\host\\x`): not a file of the repository (huggingface_hub's rule, cited above)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not filename or ".." in filename.replace("\\", "/").split("/"):
        return True
    return any(p.drive or p.root for p in (PurePosixPath(filename), *(PureWindowsPath(x) for x in filename.split("/"))))


def remove(name: str) -> LocalModel:
    """Forget a model; delete its files only when ipo downloaded them (never a file it
    used in place from the user's Hugging Face cache)."""
    model = Manifest().remove(name)
    if model.source == "catalogue":
        for record in model.files.values():
            # Only a file inside ipo's own store is ipo's to delete (gates/paths.py `inside`):
            # a manifest entry naming any other path (edited, planted) deletes nothing.
            if record.get("from") != "hf-cache" and paths.inside(record["path"], models_dir()) \
                    and Path(record["path"]).is_file():
                Path(record["path"]).unlink(missing_ok=True)
        folder = models_dir() / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return model
