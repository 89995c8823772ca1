"""`ipo cache`: the on-disk caches."""

from __future__ import annotations

from typing import Any

from ipo_cli.cli.console import out
from ipo_cli.cli.options import CacheDirOpt, JsonOpt
from ipo_cli.cli.output import human_bytes, show

# ---- ipo cache --------------------------------------------------------------------

def cache_info(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Entries, size and location of each cache, shard images included."""
    from ipo_cli import cache

    root = cache.cache_root(cache_dir)
    stores = cache.info(root)

    def render(_: Any) -> None:
        from rich.table import Table

        table = Table(title=f"ipo cache at {root}")
        for col in ("store", "entries", "size", "path"):
            table.add_column(col)
        for s in stores:
            table.add_row(s.name, str(s.entries), human_bytes(s.bytes), s.path)
        out.print(table)

    show({"root": str(root), "stores": [s.__dict__ for s in stores]}, as_json, render)


def cache_clear(cache_dir: CacheDirOpt = None) -> None:
    """Delete every cached embedding, caption, LLM answer and shard image (only what ipo made)."""
    from ipo_cli import cache

    root = cache.cache_root(cache_dir)
    removed = cache.clear(root)
    out.print(f"removed {removed} entries from {root}")
