"""The model catalogue (models/*.json), the local model store and `pull`.

A catalogue entry names a GGUF model on the Hugging Face hub: repository, a pinned
revision (commit hash), the exact model file and, for a multimodal model, its projector
(mmproj) file, with their sizes and sha256 digests as public references give them (cited
in the entry), plus the llama-cpp-python chat handler that fits it. An entry may give a
glob pattern instead of a name (`file_pattern`, `mmproj_pattern`): it resolves against the
hub's listing by a fixed preference (`MODEL_PREFERENCE`, `MMPROJ_PREFERENCE`), and
`pull` says which file it chose.

The store lives under `IPO_HOME` (default: the user data directory) in `models/`, with a
`manifest.json` recording name, paths, sha256, size and when each model was pulled or
added. Before downloading, `pull` looks for the exact file (repo, revision, name) in the
user's Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub`, ~/.cache/huggingface/hub) and
uses it in place. Downloads go to `<file>.part` under a lock (a second `pull` of the same
file waits) and resume from there with an HTTP Range request, whether the connection broke
mid-way or the process was killed; the finished file is installed only when its sha256
matches the catalogue's pin or, for an entry without pins, the hub's LFS sha256.

The user's hub token (`HF_TOKEN`, or the one `hf auth login` stored) is sent to the hub's
own host only, never to the CDN a download is redirected to, and never written anywhere.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
import urllib.error
import urllib.parse
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
        return sum(sizes) if sizes and all(isinstance(n, int) for n in sizes) else None

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
            not isinstance(v, dict) or not isinstance(v.get("size"), int) or not SHA256_HEX.match(str(v.get("sha256", "")))
            for v in files.values()):
        return "'files' must map roles to {size: int, sha256: 64 hex digits}"
    if not isinstance(data.get("n_ctx", 4096), int) or data.get("n_ctx", 4096) < 256:
        return "'n_ctx' must be an integer of at least 256"
    if data.get("handler") is not None and data.get("handler") not in HANDLERS:
        return f"'handler' must be one of {', '.join(HANDLERS)}"
    return None


def load_catalogue() -> dict[str, CatalogueEntry]:
    entries: dict[str, CatalogueEntry] = {}
    for folder in _catalogue_dirs():
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError, OSError) as exc:
                raise IpoError(f"catalogue file {path} is malformed: {exc}") from None
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
        hint = "fix or delete it, then pull or add the models again"
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise IpoError(f"model manifest {self.path} is corrupt: {exc}", hint) from None
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


def hub_token() -> str | None:
    """The user's hub token: HF_TOKEN, else what `hf auth login` stored (huggingface_hub
    reads both, and HF_TOKEN_PATH / HF_HOME). Kept in memory only."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip() or None
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - an unreadable token file means no token
        return None


class _HubRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but drop the Authorization header when one leaves the hub's host:
    the hub sends downloads to a CDN that must never see the user's token (huggingface_hub
    does the same)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(endpoint()).netloc:
            for name in list(new.headers):
                if name.lower() == "authorization":
                    del new.headers[name]
        return new


_opener = urllib.request.build_opener(_HubRedirects)


def _hub_request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    headers = {"User-Agent": "ipo-cli", **(headers or {})}
    token = hub_token()
    if token and urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(endpoint()).netloc:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _hub_http_error(exc: urllib.error.HTTPError, repo: str, revision: str, what: str) -> IpoError:
    """The hub's own error codes (X-Error-Code, as huggingface_hub reads them) as one line."""
    code = exc.headers.get("X-Error-Code", "") if exc.headers else ""
    if exc.code in (401, 403) or code == "GatedRepo":
        told = " with your token" if hub_token() else ""
        return IpoError(
            f"the hub refused {what} from {repo}{told} (HTTP {exc.code}): the repository is gated or private",
            f"accept its terms at {endpoint()}/{repo}, then log in with `hf auth login` or set HF_TOKEN",
        )
    if code == "RevisionNotFound" or (exc.code == 404 and code != "RepoNotFound" and what == "the file list"):
        return IpoError(f"{repo} has no revision {revision!r} on the hub (HTTP {exc.code})",
                        "the catalogue entry needs updating; report it")
    if code == "RepoNotFound":
        return IpoError(f"the hub has no repository {repo} (HTTP {exc.code})", "the catalogue entry needs updating")
    if code == "EntryNotFound" or exc.code == 404:
        return IpoError(f"{repo}@{revision} has no {what} (HTTP 404)", "the catalogue entry needs updating; report it")
    return IpoError(f"the model hub refused {what} from {repo}: HTTP {exc.code}")


@dataclass
class RemoteFile:
    role: str
    filename: str
    size: int | None
    sha256: str | None  # what the file must hash to
    verified_by: str  # "catalogue" (a pinned, cited digest) or "hub" (the hub's LFS sha256)
    chosen_from: list[str] = field(default_factory=list)  # a pattern's matches, when there were several


def _http_json(url: str, repo: str, revision: str, timeout: float = 30) -> Any:
    try:
        with _opener.open(_hub_request(url), timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _hub_http_error(exc, repo, revision, "the file list") from None


def prefer(matches: list[str], role: str) -> str:
    """A pattern's matches resolved by the stated preference (see MODEL_PREFERENCE)."""
    order = MMPROJ_PREFERENCE if role == "mmproj" else MODEL_PREFERENCE
    for quant in order:
        tag = re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9])", re.IGNORECASE)
        hits = sorted(m for m in matches if tag.search(Path(m).name))
        if hits:
            return hits[0]
    return sorted(matches)[0]


def remote_files(entry: CatalogueEntry) -> list[RemoteFile]:
    """The exact files to fetch, checked against the hub's file listing at the entry's
    revision (patterns resolved there)."""
    url = f"{endpoint()}/api/models/{entry.repo}/tree/{urllib.parse.quote(entry.revision, safe='')}?recursive=true"
    try:
        listing = _http_json(url, entry.repo, entry.revision)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise _network_error(entry.name, exc) from None
    if not isinstance(listing, list):
        raise IpoError(f"the hub's file list of {entry.repo}@{entry.revision} is not a list", "is HF_ENDPOINT a hub?")
    files = {item["path"]: item for item in listing
             if isinstance(item, dict) and item.get("type") == "file" and isinstance(item.get("path"), str)}
    wanted = [("model", entry.source.get("file"), entry.source.get("file_pattern"))]
    if entry.kind == "lmm":
        wanted.append(("mmproj", entry.source.get("mmproj"), entry.source.get("mmproj_pattern")))
    out = []
    for role, exact, pattern in wanted:
        chosen_from: list[str] = []
        if exact:
            if exact not in files:
                raise IpoError(f"{entry.repo}@{entry.revision} has no file {exact!r}",
                               "the catalogue entry needs updating; report it")
            name = exact
        else:
            matches = sorted(p for p in files if fnmatch.fnmatch(p, pattern or "") and p.endswith(".gguf")
                             and (role == "mmproj") == ("mmproj" in p.lower()))
            if not matches:
                raise IpoError(f"{entry.repo}@{entry.revision}: no file matches the {role} pattern {pattern!r}",
                               "the catalogue entry needs updating; report it")
            name = prefer(matches, role)
            chosen_from = matches if len(matches) > 1 else []
        item = files[name]
        lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else {}
        pin = entry.files.get(role) or {}
        listed_size = lfs.get("size") if isinstance(lfs.get("size"), int) else item.get("size")
        listed_size = listed_size if isinstance(listed_size, int) else None
        if exact and isinstance(pin.get("size"), int) and listed_size is not None and listed_size != pin["size"]:
            raise IpoError(f"{entry.repo}@{entry.revision}: {name} has {listed_size} bytes on the hub, "
                           f"the catalogue pins {pin['size']}", "the catalogue entry needs updating; report it")
        if exact and SHA256_HEX.match(str(pin.get("sha256", ""))):
            sha, by = pin["sha256"], "catalogue"
        else:
            sha = str(lfs.get("oid") or lfs.get("sha256") or "").lower()
            if not SHA256_HEX.match(sha):
                raise IpoError(f"the hub lists no valid sha256 for {entry.repo}/{name}, and the catalogue pins none",
                               "ipo installs only files it can verify; report it")
            by = "hub"
        out.append(RemoteFile(role, name, listed_size, sha, by, chosen_from))
    return out


def _network_error(name: str, exc: Exception) -> IpoError:
    if isinstance(exc, IpoError):
        return exc
    return IpoError(
        f"could not reach the model hub at {endpoint()} to pull {name!r}: {getattr(exc, 'reason', exc)}",
        "check the connection (or HF_ENDPOINT) and run the same command again; finished parts are kept",
    )


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

    found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def download(url: str, dest: Path, expected_size: int | None, progress: Callable[[int, int | None], None] | None = None,
             retries: int = 3, backoff: float = 0.5, what: tuple[str, str] = ("", "")) -> None:
    """Fetch url to dest via dest.part, resuming from whatever .part already holds."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have == expected_size:
            break
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with _opener.open(_hub_request(url, headers), timeout=60) as response:
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
                raise _hub_http_error(exc, what[0] or url, what[1], f"file {dest.name}") from None
            attempt += 1
            if attempt > retries:
                raise IpoError(f"download of {dest.name} failed after {retries + 1} tries: HTTP {exc.code}",
                               "run the same command again to resume") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            attempt += 1
            if attempt > retries:
                raise IpoError(
                    f"download of {dest.name} was interrupted at {have} bytes after {retries + 1} tries: "
                    f"{getattr(exc, 'reason', exc)}",
                    "run the same command again to resume from there",
                ) from None
        time.sleep(backoff * attempt)
    part.replace(dest)


def _check(path: Path, remote: RemoteFile, name: str, delete: bool) -> str:
    """Size and sha256 of a file against what it must be; returns the digest."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        if delete:
            path.unlink()
        raise IpoError(f"{remote.filename} has {size} bytes, the hub says {remote.size}"
                       + ("; the file was deleted" if delete else ""), f"run: ipo models pull {name}")
    digest = sha256_file(path)
    if digest != remote.sha256:
        if delete:
            path.unlink()
        raise IpoError(
            f"{remote.filename} failed its checksum (sha256 {digest[:12]}..., expected {remote.sha256[:12]}... "
            f"from the {remote.verified_by})" + ("; the file was deleted" if delete else ""),
            f"run: ipo models pull {name}",
        )
    return digest


def pull(name: str, progress_factory: Callable[[str, int | None], Callable[[int, int | None], None]] | None = None,
         notify: Callable[[str], None] | None = None) -> LocalModel:
    """Download a catalogue model into the store (or use the user's Hugging Face cache copy),
    verify it and record it in the manifest. `notify` hears what was chosen and reused."""
    from filelock import FileLock, Timeout

    say = notify or (lambda message: None)
    catalogue = load_catalogue()
    if name not in catalogue:
        raise IpoError(f"unknown model {name!r}" + close_matches(name, list(catalogue)), "see: ipo models list")
    entry = catalogue[name]
    pinned = [RemoteFile(role, entry.source["file" if role == "model" else role], pin["size"], pin["sha256"],
                         "catalogue") for role, pin in sorted(entry.files.items())] if entry.pinned else None
    in_cache: dict[str, Path | None] = {}

    def cached_copy(filename: str) -> Path | None:  # looked up once per file
        if filename not in in_cache:
            in_cache[filename] = find_in_hf_cache(entry.repo, entry.revision, filename)
        return in_cache[filename]

    if pinned and all(cached_copy(f.filename) for f in pinned):
        files = pinned  # everything is in the user's hub cache: no need to ask the hub
    elif offline():
        # Offline, the user's hub cache can still serve a fully pinned entry.
        if not entry.pinned:
            raise IpoError(f"cannot pull {name!r} while offline (HF_HUB_OFFLINE or IPO_OFFLINE is set)",
                           f"unset it and run: ipo models pull {name}")
        files = pinned
    else:
        files = remote_files(entry)
    target = models_dir() / name
    records: dict[str, dict[str, Any]] = {}
    for remote in files:
        if remote.chosen_from:
            say(f"{remote.role} pattern matched {', '.join(remote.chosen_from)}; chose {remote.filename} "
                f"(preference {' > '.join(MMPROJ_PREFERENCE if remote.role == 'mmproj' else MODEL_PREFERENCE)})")
        cached = cached_copy(remote.filename)
        if cached is not None:
            digest = _check(cached, remote, name, delete=False)
            say(f"using {remote.filename} from your Hugging Face cache: {cached}")
            records[remote.role] = {"path": str(cached), "sha256": digest, "size": cached.stat().st_size,
                                    "file": remote.filename, "verified": remote.verified_by, "from": "hf-cache"}
            continue
        if offline():
            raise IpoError(f"cannot pull {name!r} while offline: {remote.filename} is not in your Hugging Face cache "
                           f"({hf_cache_dir()})", f"unset HF_HUB_OFFLINE / IPO_OFFLINE and run: ipo models pull {name}")
        dest = target / Path(remote.filename).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(dest) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            say(f"another ipo is downloading {remote.filename}; waiting for it to finish")
            lock.acquire()
        try:
            url = (f"{endpoint()}/{entry.repo}/resolve/{urllib.parse.quote(entry.revision, safe='')}/"
                   f"{urllib.parse.quote(remote.filename)}")
            if not (dest.is_file() and remote.size is not None and dest.stat().st_size == remote.size):
                callback = progress_factory(remote.filename, remote.size) if progress_factory else None
                download(url, dest, remote.size, callback, what=(entry.repo, entry.revision))
            digest = _check(dest, remote, name, delete=True)
        finally:
            lock.release()
        records[remote.role] = {"path": str(dest), "sha256": digest, "size": dest.stat().st_size,
                                "file": remote.filename, "verified": remote.verified_by, "from": "download"}
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
    pinned: bool | None = None  # catalogue entries: exact files at a commit with published sha256s


def list_models() -> list[ListedModel]:
    catalogue = load_catalogue()
    installed = Manifest().load()
    rows = []
    for name, entry in catalogue.items():
        local = installed.get(name)
        size = sum(f["size"] for f in local.files.values()) if local else entry.size
        rows.append(ListedModel(name, entry.kind, local is not None, size, f"hf:{entry.repo}@{entry.revision[:12]}",
                                entry.note, entry.handler, str(local.path) if local else None, entry.pinned))
    for name, local in installed.items():
        if name not in catalogue:
            rows.append(ListedModel(name, local.kind, True, sum(f["size"] for f in local.files.values()), "added",
                                    "registered with ipo models add", local.handler, str(local.path)))
    return sorted(rows, key=lambda r: (r.kind, r.name))


def remove(name: str) -> LocalModel:
    """Forget a model; delete its files only when ipo downloaded them (never a file it
    used in place from the user's Hugging Face cache)."""
    model = Manifest().remove(name)
    if model.source == "catalogue":
        for record in model.files.values():
            if record.get("from") != "hf-cache":
                Path(record["path"]).unlink(missing_ok=True)
        folder = models_dir() / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return model
