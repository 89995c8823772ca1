"""The Hugging Face hub client: the endpoint, tokens, file listings and resolve URLs.

The user's hub token (`HF_TOKEN`, or the one `hf auth login` stored) is sent to the hub's
own host only, never to the CDN a download is redirected to, and never written anywhere.
"""

from __future__ import annotations

import fnmatch
import os
import re
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


def hub_open(url: str, headers: dict[str, str] | None = None, timeout: float = 60):
    """An open response from the hub through the HTTP gate (gates/http.py): the token goes
    to the hub's own origin only, never to the CDN a download is redirected to (as
    huggingface_hub does), and is checked before it is put in a header."""
    token = hub_token()
    auth = None
    if token and http.same_origin(url, endpoint()):
        auth = {"Authorization": f"Bearer {http.check_key(token, 'the hub token (HF_TOKEN)')}"}
    return http.open_url(url, headers={"User-Agent": "ipo-cli", **(headers or {})}, auth=auth, timeout=timeout)


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
    goes through `paginate`, hf_api.py). The next page must be on the hub's own origin."""
    items: list = []
    for _page in range(MAX_PAGES):
        try:
            with hub_open(url, timeout=timeout) as response:
                page = json_in.loads(http.read_capped(response, what="the hub's file list"),
                                     f"the hub's file list {url}")
                following = next_page(response.headers.get("Link"), url)
        except urllib.error.HTTPError as exc:
            raise hub_http_error(exc, repo, revision, "the file list") from None
        if not isinstance(page, list):
            return page  # the caller names what is wrong
        items.extend(page)
        if following is None:
            return items
        if not http.same_origin(following, endpoint()):
            raise IpoError(f"the hub's file list of {repo}@{revision} links its next page to another host",
                           "is HF_ENDPOINT a hub?")
        url = following
    raise IpoError(f"the hub's file list of {repo}@{revision} has more than {MAX_PAGES} pages", "is HF_ENDPOINT a hub?")


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
    except (urllib.error.URLError, OSError) as exc:
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
    if isinstance(exc, IpoError):
        return exc
    return IpoError(
        f"could not reach the model hub at {endpoint()} to pull {name!r}: {http.scrub(getattr(exc, 'reason', exc))}",
        "check the connection (or HF_ENDPOINT) and run the same command again; finished parts are kept",
    )
