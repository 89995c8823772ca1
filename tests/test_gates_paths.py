"""The paths gate (ipo_cli/gates/paths.py): names the OS refuses, special files, --out
never through a link or onto a device, deletion only inside ipo's folders, OSError by
what it is."""

from __future__ import annotations

import errno
import os

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.gates import paths


def test_nul_and_over_long_names_are_refused_before_the_os(tmp_path):
    with pytest.raises(IpoError, match="holds a NUL byte"):
        paths.check_path("a\0b", "--images")
    with pytest.raises(IpoError, match=f"over the system's limit of {paths.NAME_MAX}"):
        paths.check_path(tmp_path / ("n" * (paths.NAME_MAX + 1)), "--images")
    with pytest.raises(IpoError, match="over the system's limit"):
        paths.check_path("/".join(["d" * 200] * (paths.PATH_MAX // 200 + 1)), "--images")


def test_special_files_are_named_for_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(IpoError, match="is a FIFO"):
        paths.check_path(tmp_path / "fifo", "classes file", kind="file")
    with pytest.raises(IpoError, match="is a device"):
        paths.check_path("/dev/null", "classes file", kind="file")
    with pytest.raises(IpoError, match="is a folder, not a file"):
        paths.check_path(tmp_path, "classes file", kind="file")


@pytest.mark.parametrize("make, needle", [
    (lambda p: os.symlink(p.parent / "elsewhere", p), "symbolic link"),
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_out_is_never_a_link_a_fifo_or_a_folder(tmp_path, make, needle):
    target = tmp_path / "out.json"
    make(target)
    with pytest.raises(IpoError, match=needle):
        paths.write_text_atomic(target, "{}")
    assert not (tmp_path / "elsewhere").exists()


def test_out_onto_a_device_is_refused():
    with pytest.raises(IpoError, match="is a device"):
        paths.write_text_atomic("/dev/null", "{}")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_the_atomic_writer_replaces_a_regular_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    paths.write_text_atomic(target, "one")
    paths.write_text_atomic(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_inside_resolves_links_and_dots(tmp_path):
    store = tmp_path / "store"
    (store / "m").mkdir(parents=True)
    os.symlink(tmp_path, store / "m" / "link")
    assert paths.inside(store / "m" / "f.gguf", store)
    assert not paths.inside(store / ".." / "f.gguf", store)
    assert not paths.inside(store / "m" / "link" / "f.gguf", store)


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left on the device"), (errno.ENAMETOOLONG, "name in the path is too long"),
    (errno.EACCES, "permission denied"), (errno.ENOTDIR, "not a folder"),
])
def test_os_errors_are_said_by_what_they_are_with_the_path(code, words):
    error = paths.os_error(OSError(code, os.strerror(code), "/some/path"), "cannot write --out x")
    assert words in str(error) and "/some/path" in str(error)
