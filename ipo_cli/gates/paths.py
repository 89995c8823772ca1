"""Paths: the one check for paths a user passes, the one atomic writer for files ipo
writes where the user said (--out), the one test for what ipo may delete, and OSError
worded by what it is.

A path with a NUL byte, a name over NAME_MAX or a path over PATH_MAX is a one-line error
before the OS is asked; a FIFO, a device or a socket is named as what it is (reading one
would block or read forever; writing one would replace a system file when run as root).
`--out` is written only as a regular file, never through a symbolic link.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ipo_cli.errors import IpoError


def _limit(name: str, default: int) -> int:
    try:
        return int(os.pathconf("/", name))
    except (OSError, ValueError, AttributeError):
        return default


NAME_MAX = _limit("PC_NAME_MAX", 255)  # bytes in one path component (Linux: 255)
PATH_MAX = _limit("PC_PATH_MAX", 4096)  # bytes in a whole path (Linux: 4096)

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENAMETOOLONG: "a name in the path is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "no such file or folder",
    errno.EROFS: "the file system is read-only",
    errno.ELOOP: "too many symbolic links",
    errno.EEXIST: "it already exists",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
    errno.EXDEV: "it is on another device",
}


def describe_os_error(exc: OSError) -> str:
    """What an OSError is, in words ("no space left on the device")."""
    return _REASONS.get(exc.errno or -1) or (exc.strerror or type(exc).__name__)


def os_error(exc: OSError, context: str, hint: str | None = None) -> IpoError:
    """`context` ("cannot write --out x.json") with what went wrong and the path involved."""
    path = exc.filename if exc.filename is not None else None
    where = f" ({path})" if path is not None and str(path) not in context else ""
    if hint is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space and run the same command again"
    return IpoError(f"{context}: {describe_os_error(exc)}{where}", hint)


def special_kind(mode: int) -> str | None:
    """'a FIFO', 'a device', 'a socket' for such a file mode, else None."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def name_ok(text: str) -> bool:
    """`check_name`'s test alone, for a path met a million times (split entries): no Path
    made, no message built; the caller asks `check_name` for the message when this fails."""
    if "\0" in text:
        return False
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return len(encoded) < PATH_MAX and all(len(part) <= NAME_MAX for part in encoded.split(b"/"))


def check_name(path: Path | str, what: str) -> Path:
    """Refuse what no OS call could take: NUL bytes, a name or a path too long."""
    text = os.fspath(path)
    if "\0" in text:
        raise IpoError(f"{what} {text!r} holds a NUL byte", "no file name can hold one; check the path")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise IpoError(f"{what} {text!r} cannot be encoded as a file name on this system") from None
    if len(encoded) >= PATH_MAX:
        raise IpoError(f"{what} is {len(encoded)} bytes long, over the system's limit of {PATH_MAX - 1} "
                       f"(it starts {text[:60]!r})", "use a shorter path")
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise IpoError(f"{what}: the name {os.fsdecode(part)[:40]!r}... is {len(part)} bytes long, "
                           f"over the system's limit of {NAME_MAX}", "use a shorter name")
    return Path(text)


def check_path(path: Path | str, what: str, must_exist: bool = False, kind: str | None = None) -> Path:
    """A path to read: its name checked, then (when it exists) that it is no special file
    and is of `kind` ("file" or "dir"). Returns it as a Path."""
    path = check_name(path, what)
    try:
        info = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise IpoError(f"{what} {path} does not exist") from None
        return path
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and not must_exist:
            return path
        raise os_error(exc, f"cannot use {what} {path}") from None
    special = special_kind(info.st_mode)
    if special:
        raise IpoError(f"{what} {path} is {special}, not a {'folder' if kind == 'dir' else 'file'}")
    if kind == "file" and stat.S_ISDIR(info.st_mode):
        raise IpoError(f"{what} {path} is a folder, not a file")
    if kind == "dir" and not stat.S_ISDIR(info.st_mode):
        raise IpoError(f"{what} {path} is a file, not a folder")
    return path


def check_out_file(path: Path | str, what: str = "--out") -> Path:
    """A file ipo will write: a regular file or nothing yet; never a symbolic link (it could
    point anywhere), a device, a FIFO or a socket."""
    path = check_name(path, what)
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise os_error(exc, f"cannot use {what} {path}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise IpoError(f"{what} {path} is a symbolic link; ipo writes only regular files",
                           "name the file itself, or another path")
        special = special_kind(info.st_mode)
        if special:
            raise IpoError(f"{what} {path} is {special}; ipo writes only regular files", "name a file")
        if stat.S_ISDIR(info.st_mode):
            raise IpoError(f"{what} {path} is a folder", "name a file, e.g. --out results.json")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IpoError(f"{what} {path}: {parent} is a file, not a folder")
            break
    return path


def check_out_folder(path: Path | str, what: str = "--out") -> Path:
    """A folder ipo will write into: never a symbolic link, a device or a FIFO."""
    path = check_name(path, what)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise os_error(exc, f"cannot use {what} {path}") from None
    if stat.S_ISLNK(info.st_mode):
        raise IpoError(f"{what} {path} is a symbolic link; ipo writes its folders only as real folders",
                       "name the folder itself, or another path")
    special = special_kind(info.st_mode)
    if special:
        raise IpoError(f"{what} {path} is {special}, not a folder")
    return path


def write_text_atomic(path: Path | str, text: str, what: str = "--out") -> None:
    """Write `text` to `path` in one step (`replace_atomic`), after the --out checks."""
    path = check_out_file(path, what)
    replace_atomic(path, lambda fh: fh.write(text.encode("utf-8")), f"{what} {path}")


def replace_atomic(path: Path, write: Callable[[BinaryIO], object], what: str) -> None:
    """`write(fh)` into a fresh temporary file in the same folder (created exclusively, so no
    link is followed), flushed to disk, renamed over `path`: a reader sees the old file or
    the new one, never half of it; the temporary file never outlives a failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise os_error(exc, f"cannot write {what}") from None


def inside(path: Path | str, root: Path | str) -> bool:
    """Whether `path`, all links resolved, lies inside `root` (itself resolved): the test
    before ipo deletes anything."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, ValueError, RuntimeError):
        return False


def refuse_input_as_output(out: Path | str | None, inputs: Iterable[Path | str | None], what: str = "--out",
                           folder: bool = False) -> None:
    """Refuse, before any work, an output that would overwrite what the command reads.

    `out` (a file, or with `folder` a folder ipo writes or replaces, `--force`) must not be
    an input by any name (the same path, a link to it, a hard link: same device and inode),
    nor lie inside a folder being read (`ipo describe DIR --out DIR/photo.png` would
    replace the photo with JSON lines; a file written into an image folder may be read as
    an image next time). A folder output must also not hold an input (`--force` replaces
    the folder). `inputs` are the files and folders the command reads, each image file
    included where the command lists them (one stat each); None entries and paths that do
    not exist (such as `paper:NAME`) are skipped."""
    if out is None:
        return
    out_path = Path(out)
    try:
        resolved_out = out_path.resolve()
        out_info = out_path.stat()  # follows links: what would be written is the target
        out_id: tuple[int, int] | None = (out_info.st_dev, out_info.st_ino)
    except FileNotFoundError:
        out_id = None  # not there yet: it cannot be an input, only lie inside one
    except (OSError, RuntimeError, ValueError):
        return  # the paths gate (check_out_file) says what is wrong with such an --out
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given)
        try:
            info = source.stat()
        except (OSError, ValueError):
            continue
        if out_id is not None and (info.st_dev, info.st_ino) == out_id:
            raise IpoError(f"{what} {out_path} is {source}, which this command reads; writing it would destroy "
                           "its input", f"choose another {what} path")
        is_dir = stat.S_ISDIR(info.st_mode)
        if not is_dir and not (folder and out_id is not None):
            continue
        try:
            resolved = source.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if is_dir and resolved_out != resolved and resolved_out.is_relative_to(resolved):
            raise IpoError(f"{what} {out_path} lies inside {source}, a folder this command reads",
                           f"write {what} outside {source}")
        if folder and resolved != resolved_out and resolved.is_relative_to(resolved_out):
            raise IpoError(f"{what} {out_path} holds {source}, which this command reads (the folder is ipo's to "
                           "write and replace)", f"choose a {what} folder that holds none of the inputs")
