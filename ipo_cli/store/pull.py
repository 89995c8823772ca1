"""`ipo models pull` and `ipo models list`: downloading, resuming, locking and checking files.

Before downloading, `pull` looks for the exact file (repo, revision, name) in the user's
Hugging Face cache and uses it in place. Downloads go to `<file>.part` under a lock (a
second `pull` of the same file waits) and resume from there with an HTTP Range request,
whether the connection broke mid-way or the process was killed; the finished file is
installed only when its sha256 matches the catalogue's pin or, for an entry without pins,
the hub's LFS sha256.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipo_cli.cache import sha256_file
from ipo_cli.errors import IpoError, close_matches
from ipo_cli.gates import http
from ipo_cli.store.entries import MMPROJ_PREFERENCE, MODEL_PREFERENCE, load_catalogue
from ipo_cli.store.hub import RemoteFile, endpoint, hub_http_error, hub_open, offline, remote_files
from ipo_cli.store.local import LocalModel, Manifest, find_in_hf_cache, hf_cache_dir, models_dir, now

# A download's total deadline (each try): this many seconds, plus its size at this rate.
# A connection that trickles (one byte every few seconds, each read within the timeout)
# is cut there and resumed; a real one, however slow, gets hours for gigabytes.
DOWNLOAD_DEADLINE_BASE = 120.0
DOWNLOAD_MIN_RATE = 100 << 10  # bytes a second
MAX_UNLISTED = 512 << 30  # a file the hub lists without a size: no GGUF is larger


def _too_big(dest: Path, limit: int, offered: int | None) -> IpoError:
    said = f" offers {offered} bytes" if offered is not None else " sent more"
    return IpoError(f"the download of {dest.name}{said}, more than the {limit} bytes the hub lists for it; "
                    "ipo stopped there", "the catalogue entry or HF_ENDPOINT is wrong; report it")


def download(url: str, dest: Path, expected_size: int | None, progress: Callable[[int, int | None], None] | None = None,
             retries: int = 3, backoff: float = 0.5, what: tuple[str, str] = ("", "")) -> None:
    """Fetch url to dest via dest.part, resuming from whatever .part already holds.

    It stops at the listed size: a Content-Length beyond it is refused before a byte is
    read, and the body is read against a running count, so a server that sends more
    never puts more than the listed size on disk. Each try has a total deadline."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = expected_size if expected_size is not None else MAX_UNLISTED
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have == expected_size:
            break
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        deadline = time.monotonic() + DOWNLOAD_DEADLINE_BASE + max(limit - have, 0) / DOWNLOAD_MIN_RATE
        try:
            with hub_open(url, headers, timeout=60, deadline=deadline) as response:
                if have and response.status != 206:  # the server ignored Range: start again
                    have = 0
                    part.unlink(missing_ok=True)
                length = response.headers.get("Content-Length", "")
                if length.isascii() and length.isdigit() and have + int(length) > limit:
                    raise _too_big(dest, limit, have + int(length))
                if progress:
                    progress(have, expected_size)
                with open(part, "ab") as fh:
                    while have < limit and (chunk := http.read_some(response, min(1 << 16, limit - have),
                                                                    deadline)):
                        fh.write(chunk)
                        fh.flush()
                        have += len(chunk)
                        if progress:
                            progress(have, expected_size)
                if have >= limit and http.read_some(response, 1, deadline):
                    raise _too_big(dest, limit, None)
            if expected_size is None or have >= expected_size:
                break
            raise ConnectionError(f"connection closed after {have} of {expected_size} bytes")
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # asked past the end: .part is bigger than the file
                part.unlink(missing_ok=True)
            elif exc.code < 500:
                raise hub_http_error(exc, what[0] or url, what[1], f"file {dest.name}") from None
            attempt += 1
            if attempt > retries:
                raise IpoError(f"download of {dest.name} failed after {retries + 1} tries: HTTP {exc.code}",
                               "run the same command again to resume") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            attempt += 1
            if attempt > retries:
                raise IpoError(
                    f"download of {dest.name} was interrupted at {have} bytes after {retries + 1} tries: "
                    f"{getattr(exc, 'what', None) or getattr(exc, 'reason', exc)}",
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
            f"{remote.filename} failed its checksum (sha256 {digest[:12]}..., expected {(remote.sha256 or '')[:12]}... "
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
        assert pinned is not None  # an entry is pinned exactly when `pinned` was built
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
    model = LocalModel(name, entry.kind, records, entry.handler, entry.n_ctx, "catalogue", now())
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
