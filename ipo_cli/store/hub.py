"""The Hugging Face hub client: the endpoint, tokens, file listings and resolve URLs.

The user's hub token (`HF_TOKEN`, or the one `hf auth login` stored) is sent to the hub's
own host only, never to the CDN a download is redirected to, and never written anywhere.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates import http, json_in
from ipo_cli.store.entries import MMPROJ_PREFERENCE, MODEL_PREFERENCE, SHA256_HEX, CatalogueEntry


def endpoint() -> str:
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise IpoError(f"HF_ENDPOINT {http.scrub(url)!r} is not an http(s) address without credentials",
                       "unset it, or set it to e.g. https://huggingface.co")
    return url


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


def hub_open(url: str, headers: dict[str, str] | None = None, timeout: float = 60, deadline: float | None = None):
    """An open response from the hub through the HTTP gate (gates/http.py): the token goes
    to the hub's own origin only, never to the CDN a download is redirected to (as
    huggingface_hub does), and is checked before it is put in a header. The connection is
    shut at `deadline` (time.monotonic(); the gate's default when None)."""
    token = hub_token()
    auth = None
    if token and http.same_origin(url, endpoint()):
        auth = {"Authorization": f"Bearer {http.check_key(token, 'the hub token (HF_TOKEN)')}"}
    return http.open_url(url, headers={"User-Agent": "ipo-cli", **(headers or {})}, auth=auth, timeout=timeout,
                         deadline=deadline)


def hub_http_error(exc: urllib.error.HTTPError, repo: str, revision: str, what: str) -> IpoError:
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


MAX_PAGES = 1000  # of one file listing; a hub that links on past this is refused
# All pages of one listing together: the largest model repositories list a few hundred
# files, well under 1 MB of JSON; a hub that sends more is refused (its pages are parsed
# into objects several times their size).
MAX_LISTING_BYTES = 16 << 20
LISTING_DEADLINE = 300.0  # seconds for all pages of one listing, whatever the pace


def next_page(link: str | None, current: str) -> str | None:
    """The `rel="next"` URL of a `Link` header (`<URL>; rel="next"`, the GitHub format that
    huggingface_hub's `paginate` follows: huggingface_hub/utils/_pagination.py reads
    `response.links["next"]["url"]`), resolved against the page it came with."""
    for part in (link or "").split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if not (target.startswith("<") and target.endswith(">")):
            continue
        rels = {p.strip().partition("=")[2].strip('"').lower() for p in params.split(";") if "=" in p}
        if any("next" in r.split() for r in rels):
            return urllib.parse.urljoin(current, target[1:-1])
    return None


def _http_json(url: str, repo: str, revision: str, timeout: float = 30) -> Any:
    """A listing, every page of it: the hub pages long tree listings and links each page
    to the next with a `Link: <...>; rel="next"` header (huggingface_hub's `list_repo_tree`
    goes through `paginate`, hf_api.py). The next page must be on the hub's own origin.
    All pages together are bounded by bytes (`MAX_LISTING_BYTES`, a running count each
    page is read against) and by one total deadline (`LISTING_DEADLINE`), besides the
    per-read timeout; of each item only what ipo uses is kept."""
    items: list = []
    deadline = time.monotonic() + LISTING_DEADLINE
    left = MAX_LISTING_BYTES
    for _page in range(MAX_PAGES):
        try:
            with hub_open(url, timeout=timeout, deadline=deadline) as response:
                body = http.read_capped(response, left, deadline, what=f"the hub's file list of {repo}")
                following = next_page(response.headers.get("Link"), url)
        except urllib.error.HTTPError as exc:
            raise hub_http_error(exc, repo, revision, "the file list") from None
        except http.TooLarge:
            raise IpoError(f"the hub's file list of {repo}@{revision} is over {MAX_LISTING_BYTES >> 20} MiB in all "
                           f"(page {_page + 1}); ipo stopped reading it", "is HF_ENDPOINT a hub?") from None
        left -= len(body)
        page = json_in.loads(body, f"the hub's file list {url}")
        del body
        if not isinstance(page, list):
            return page  # the caller names what is wrong
        items.extend(_listed(item) for item in page)
        if following is None:
            return items
        if not http.same_origin(following, endpoint()):
            raise IpoError(f"the hub's file list of {repo}@{revision} links its next page to another host",
                           "is HF_ENDPOINT a hub?")
        url = following
    raise IpoError(f"the hub's file list of {repo}@{revision} has more than {MAX_PAGES} pages", "is HF_ENDPOINT a hub?")


def _listed(item: Any) -> Any:
    """What ipo reads of a listing item (type, path, size, lfs oid and size)."""
    if not isinstance(item, dict):
        return None
    kept = {k: item[k] for k in ("type", "path", "size") if k in item}
    lfs = item.get("lfs")
    if isinstance(lfs, dict):
        kept["lfs"] = {k: lfs[k] for k in ("oid", "sha256", "size") if k in lfs}
    return kept


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
    except (urllib.error.URLError, OSError, http.NetworkFailure) as exc:
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
        lfs = found if isinstance(found := item.get("lfs"), dict) else {}
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
    """A transport failure while asking the hub, as one line naming it (and HF_ENDPOINT)."""
    if isinstance(exc, IpoError) and not isinstance(exc, http.NetworkFailure):
        return exc
    failure = http.transport_error(endpoint(), exc)
    return type(failure)(f"could not reach the model hub at {endpoint()} to pull {name!r}: {failure.what}",
                         "check the connection (or HF_ENDPOINT) and run the same command again; finished parts "
                         "are kept", failure.what)
