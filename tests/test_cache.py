import sqlite3

import numpy as np

from ipo_cli import cache


def test_arrays_round_trip_as_plain_npy_bytes(tmp_path):
    store = cache.Store(tmp_path, "embeddings")
    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    store.set_array("k", arr)
    got = store.get_array("k")
    assert got.dtype == np.float16 and got.shape == (2, 3) and (got == arr).all()
    store.close()
    # What lies in diskcache's database is the raw .npy blob, not a pickle.
    con = sqlite3.connect(tmp_path / "embeddings" / "cache.db")
    raw, = con.execute("select value from Cache where key = 'k'").fetchone()
    assert bytes(raw).startswith(b"\x93NUMPY")


def test_json_values_are_stored_as_text(tmp_path):
    store = cache.Store(tmp_path, "captions")
    store.set_json("c", {"caption": "a dog", "n": 1})
    assert store.get_json("c") == {"caption": "a dog", "n": 1}


def test_corrupt_entries_are_dropped_not_fatal(tmp_path):
    store = cache.Store(tmp_path, "embeddings")
    store._cache.set("bad", b"\x93NUMPY garbage")
    store._cache.set("wrongtype", 12345)
    assert store.get_array("bad") is None
    assert store.get_array("wrongtype") is None
    assert store.dropped == 2 and "bad" not in store._cache
    store._cache.set("badjson", "{not json")
    assert store.get_json("badjson") is None


def test_pickles_are_never_loaded(tmp_path):
    store = cache.Store(tmp_path, "embeddings")
    store._cache.set("p", np.zeros(3))  # diskcache would pickle an ndarray
    assert store.get_array("p") is None


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("IPO_CACHE_DIR", str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("IPO_CACHE_DIR")
    assert "ipo" in str(cache.cache_root())


def test_info_and_clear(tmp_path):
    store = cache.Store(tmp_path, "embeddings")
    store.set_array("a", np.ones(4))
    store.close()
    stats = {s.name: s for s in cache.info(tmp_path)}
    assert stats["embeddings"].entries == 1 and stats["captions"].entries == 0
    assert stats["embeddings"].bytes > 0
    assert cache.clear(tmp_path) == 1
    assert {s.name: s.entries for s in cache.info(tmp_path)}["embeddings"] == 0


def test_keys_change_with_every_part():
    assert cache.key_of("a", 1) == cache.key_of("a", 1)
    assert cache.key_of("a", 1) != cache.key_of("a", 2)


def test_a_read_only_store_serves_hits_and_skips_writes(tmp_path, monkeypatch):
    """As root the tests cannot make a folder read-only, so the open fails the way sqlite
    fails on one ("attempt to write a readonly database"); reads then go through sqlite's
    own read-only mode on the real file."""
    import diskcache

    store = cache.Store(tmp_path, "captions")
    store.set_json("k", {"caption": "kept"})
    store.close()
    said = []
    cache.set_warner(said.append)

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(diskcache, "Cache", refuse)
    try:
        ro = cache.Store(tmp_path, "captions")
        assert ro.read_only and ro.get_json("k") == {"caption": "kept"} and len(ro) == 1
        ro.set_json("new", {"caption": "x"})  # skipped, no error
        assert ro.get_json("new") is None
    finally:
        cache.set_warner(lambda message: None)
    assert len(said) == 1 and "read-only" in said[0]


def test_a_full_disk_is_one_error_and_keeps_what_was_written(tmp_path, monkeypatch):
    from ipo_cli.errors import IpoError

    store = cache.Store(tmp_path, "embeddings")
    store.set_array("first", np.ones(3))

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store._cache, "set", full)
    try:
        store.set_array("second", np.ones(3))
    except IpoError as exc:
        assert "is full" in str(exc) and "kept" in str(exc)
    else:
        raise AssertionError("no error")
    assert store.get_array("first") is not None
