"""The model catalogue (models/*.json), the local model store and `pull`.

A catalogue entry names a GGUF model on the Hugging Face hub: repository, revision, the
model file (or a glob pattern documented by its publisher) and, for a multimodal model,
its projector (mmproj) file, plus the llama-cpp-python chat handler that fits it.

The store lives under `IPO_HOME` (default: the user data directory) in `models/`, with a
`manifest.json` recording name, paths, sha256, size and when each model was pulled or
added. Downloads go to `<file>.part` and resume from there with an HTTP Range request,
whether the connection broke mid-way or the process was killed; the finished file is
checked against the catalogue's sha256, or the hub's own LFS sha256, and its size.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ipo_cli.cache import sha256_file
from ipo_cli.errors import IpoError, close_matches

HANDLERS = ("llava-1-5", "llava-1-6", "moondream", "nanollava", "minicpm-v-2.6", "qwen2.5-vl", "mtmd")
GGUF_MAGIC = b"GGUF"


@dataclass
class CatalogueEntry:
    name: str
    kind: str  # llm | lmm
    note: str
    license: str
    source: dict[str, str]
    n_ctx: int = 4096
    handler: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # role -> digest, where published
    size: int | None = None
    default: bool = False

    @property
    def repo(self) -> str:
        return self.source["repo"]

    @property
    def revision(self) -> str:
        return self.source.get("revision", "main")


def _catalogue_dirs() -> list[Path]:
    """The shipped catalogue, then any folders in IPO_CATALOGUE_DIR (os.pathsep-separated)."""
    here = Path(__file__).resolve().parent
    # An installed wheel carries models/ as ipo_cli/catalogue_data; a source checkout
    # (editable install) has it beside the package.
    dirs = [d for d in (here / "catalogue_data", here.parent / "models") if d.is_dir()][:1]
    extra = os.environ.get("IPO_CATALOGUE_DIR")
    if extra:
        dirs.extend(Path(p) for p in extra.split(os.pathsep) if p)
    return dirs


def load_catalogue() -> dict[str, CatalogueEntry]:
    entries: dict[str, CatalogueEntry] = {}
    for folder in _catalogue_dirs():
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                entry = CatalogueEntry(**data)
            except (json.JSONDecodeError, TypeError) as exc:
                raise IpoError(f"catalogue file {path} is malformed: {exc}") from None
            entries[entry.name] = entry
    return entries


def default_model(kind: str) -> CatalogueEntry:
    for entry in load_catalogue().values():
        if entry.kind == kind and entry.default:
            return entry
    raise IpoError(f"the catalogue names no default {kind}")


# ---- the local store ------------------------------------------------------------------
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
        try:
            data = json.loads(self.path.read_text())
            return {name: LocalModel(**entry) for name, entry in data.get("models", {}).items()}
        except (json.JSONDecodeError, TypeError) as exc:
            raise IpoError(f"model manifest {self.path} is corrupt: {exc}", "fix or delete it and pull again") from None

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


def check_gguf(path: Path, what: str = "model file") -> None:
    """A one-line error for a missing, truncated or non-GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise IpoError(f"{what} {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise IpoError(f"{what} {path} is not a GGUF file", "llama.cpp reads .gguf files; convert or re-download it")
    if path.stat().st_size < 1024:
        raise IpoError(f"{what} {path} is truncated ({path.stat().st_size} bytes)", "download it again")


def add_model(name: str, file: Path, kind: str, mmproj: Path | None = None, handler: str | None = None,
              n_ctx: int = 4096) -> LocalModel:
    """Register a GGUF the user already has; the file stays where it is."""
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
    model = LocalModel(name, kind, files, handler, n_ctx, "added", _now())
    Manifest().put(model)
    return model


def _file_record(path: Path) -> dict[str, Any]:
    path = path.resolve()
    return {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}


def _now() -> str:
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
        for role, record in model.files.items():
            if not Path(record["path"]).is_file():
                raise IpoError(f"the {role} file of {name_or_path!r} is missing: {record['path']}",
                               f"run: ipo models pull {name_or_path}")
        return model
    catalogue = load_catalogue()
    if name_or_path in catalogue:
        raise IpoError(f"model {name_or_path!r} is not pulled yet", f"run: ipo models pull {name_or_path}")
    raise IpoError(
        f"unknown model {name_or_path!r}" + close_matches(name_or_path, list(catalogue) + list(installed)),
        "see: ipo models list",
    )


# ---- downloading ----------------------------------------------------------------------
def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
        os.environ.get("IPO_OFFLINE", "").lower() in ("1", "true", "yes")


@dataclass
class RemoteFile:
    role: str
    filename: str
    size: int | None
    sha256: str | None


def _http_json(url: str, timeout: float = 30) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "ipo-cli"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def remote_files(entry: CatalogueEntry) -> list[RemoteFile]:
    """The exact files to fetch, from the hub's file listing (patterns resolved there)."""
    url = f"{endpoint()}/api/models/{entry.repo}/tree/{entry.revision}?recursive=true"
    try:
        listing = _http_json(url)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise _network_error(entry.name, exc) from None
    files = {item["path"]: item for item in listing if item.get("type") == "file"}
    wanted = [("model", entry.source.get("file"), entry.source.get("file_pattern"))]
    if entry.kind == "lmm":
        wanted.append(("mmproj", entry.source.get("mmproj"), entry.source.get("mmproj_pattern")))
    out = []
    for role, exact, pattern in wanted:
        if exact:
            if exact not in files:
                raise IpoError(f"{entry.repo}@{entry.revision} has no file {exact!r} any more",
                               "the catalogue entry needs updating; report it")
            name = exact
        else:
            matches = sorted(p for p in files if fnmatch.fnmatch(p, pattern) and p.endswith(".gguf")
                             and (role == "mmproj" or "mmproj" not in p))
            if len(matches) != 1:
                raise IpoError(
                    f"{entry.repo}@{entry.revision}: the {role} pattern {pattern!r} matches "
                    f"{len(matches)} files ({', '.join(matches[:4]) or 'none'})",
                    "the catalogue entry needs an exact file name; report it",
                )
            name = matches[0]
        item = files[name]
        lfs = item.get("lfs") or {}
        sha = entry.sha256.get(role) or lfs.get("oid") or lfs.get("sha256")
        out.append(RemoteFile(role, name, lfs.get("size") or item.get("size"), sha))
    return out


def _network_error(name: str, exc: Exception) -> IpoError:
    return IpoError(
        f"could not reach the model hub at {endpoint()} to pull {name!r}: {getattr(exc, 'reason', exc)}",
        "check the connection (or HF_ENDPOINT) and run the same command again; finished parts are kept",
    )


def download(url: str, dest: Path, expected_size: int | None, progress: Callable[[int, int | None], None] | None = None,
             retries: int = 3, backoff: float = 0.5) -> None:
    """Fetch url to dest via dest.part, resuming from whatever .part already holds."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have == expected_size:
            break
        headers = {"User-Agent": "ipo-cli", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
                if have and response.status != 206:  # the server ignored Range: start again
                    have = 0
                    part.unlink(missing_ok=True)
                if progress:
                    progress(have, expected_size)
                with open(part, "ab") as fh:
                    while chunk := response.read(1 << 16):
                        fh.write(chunk)
                        fh.flush()
                        have += len(chunk)
                        if progress:
                            progress(have, expected_size)
            if expected_size is None or have >= expected_size:
                break
            raise ConnectionError(f"connection closed after {have} of {expected_size} bytes")
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # asked past the end: .part is bigger than the file
                part.unlink(missing_ok=True)
            elif exc.code < 500:
                raise IpoError(f"the model hub refused {url}: HTTP {exc.code}") from None
            attempt += 1
            if attempt > retries:
                raise IpoError(f"download of {dest.name} failed: HTTP {exc.code}",
                               "run the same command again to resume") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            attempt += 1
            if attempt > retries:
                raise IpoError(
                    f"download of {dest.name} was interrupted at {have} bytes: {getattr(exc, 'reason', exc)}",
                    "run the same command again to resume from there",
                ) from None
        time.sleep(backoff * attempt)
    part.replace(dest)


def pull(name: str, progress_factory: Callable[[str, int | None], Callable[[int, int | None], None]] | None = None) -> LocalModel:
    """Download a catalogue model into the store, verify it and record it in the manifest."""
    catalogue = load_catalogue()
    if name not in catalogue:
        raise IpoError(f"unknown model {name!r}" + close_matches(name, list(catalogue)), "see: ipo models list")
    entry = catalogue[name]
    if offline():
        raise IpoError(f"cannot pull {name!r} while offline (HF_HUB_OFFLINE or IPO_OFFLINE is set)",
                       f"unset it and run: ipo models pull {name}")
    files = remote_files(entry)
    target = models_dir() / name
    records: dict[str, dict[str, Any]] = {}
    for remote in files:
        dest = target / Path(remote.filename).name
        url = f"{endpoint()}/{entry.repo}/resolve/{entry.revision}/{remote.filename}"
        if not (dest.is_file() and remote.size is not None and dest.stat().st_size == remote.size):
            callback = progress_factory(remote.filename, remote.size) if progress_factory else None
            download(url, dest, remote.size, callback)
        size = dest.stat().st_size
        digest = sha256_file(dest)
        if remote.size is not None and size != remote.size:
            dest.unlink()
            raise IpoError(f"{remote.filename} has {size} bytes, the hub says {remote.size}; the file was deleted",
                           f"run: ipo models pull {name}")
        if remote.sha256 and len(remote.sha256) == 64 and digest != remote.sha256:
            dest.unlink()
            raise IpoError(
                f"{remote.filename} failed its checksum (sha256 {digest[:12]}..., expected {remote.sha256[:12]}...); "
                "the file was deleted",
                f"run: ipo models pull {name}",
            )
        records[remote.role] = {"path": str(dest), "sha256": digest, "size": size, "file": remote.filename,
                                "verified": bool(remote.sha256)}
    model = LocalModel(name, entry.kind, records, entry.handler, entry.n_ctx, "catalogue", _now())
    Manifest().put(model)
    return model


@dataclass
class ListedModel:
    name: str
    kind: str
    installed: bool
    size: int | None
    source: str
    note: str
    handler: str | None
    path: str | None


def list_models() -> list[ListedModel]:
    catalogue = load_catalogue()
    installed = Manifest().load()
    rows = []
    for name, entry in catalogue.items():
        local = installed.get(name)
        size = sum(f["size"] for f in local.files.values()) if local else entry.size
        rows.append(ListedModel(name, entry.kind, local is not None, size, f"hf:{entry.repo}", entry.note,
                                entry.handler, str(local.path) if local else None))
    for name, local in installed.items():
        if name not in catalogue:
            rows.append(ListedModel(name, local.kind, True, sum(f["size"] for f in local.files.values()), "added",
                                    "registered with ipo models add", local.handler, str(local.path)))
    return sorted(rows, key=lambda r: (r.kind, r.name))


def remove(name: str) -> LocalModel:
    """Forget a model; delete its files only when ipo downloaded them."""
    model = Manifest().remove(name)
    if model.source == "catalogue":
        for record in model.files.values():
            Path(record["path"]).unlink(missing_ok=True)
        folder = models_dir() / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return model
