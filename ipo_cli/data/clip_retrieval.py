"""`ipo embed --out DIR`: image embeddings in clip-retrieval's output layout, so that the
field's index tools (clip-retrieval's `clip index`, autofaiss) take ipo's embeddings.

The layout, as rom1504/clip-retrieval writes it (clip_retrieval/clip_inference/writer.py,
`OutputSink`): per output partition i,

    DIR/img_emb/img_emb_{i}.npy          float16 (N, D), L2-normalised rows (mapper.py:
                                         `image_features.cpu().to(torch.float16)`)
    DIR/metadata/metadata_{i}.parquet    one row per embedding, column `image_path`

with i written as `str(i).zfill(int(math.log10(partition_count)) + 1)`. `clip index`
(clip_retrieval/clip_index.py) builds its index from `DIR/img_emb` with autofaiss and
copies `DIR/metadata` beside it. One ipo unit of work is one partition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.gates.paths import check_out_folder, replace_atomic


def partition_name(index: int, count: int) -> str:
    return str(index).zfill(int(math.log10(max(1, count))) + 1)


def partition_files(out: Path, index: int, count: int) -> tuple[Path, Path]:
    name = partition_name(index, count)
    return out / "img_emb" / f"img_emb_{name}.npy", out / "metadata" / f"metadata_{name}.parquet"


def check_out(out: Path) -> Path:
    """The --out folder (never a link), and pyarrow to write its parquet files."""
    out = check_out_folder(out, "--out")
    for sub in ("img_emb", "metadata"):
        check_out_folder(out / sub, "--out")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise IpoError("--out writes parquet files, which needs pyarrow",
                       'pip install pyarrow (the [ray] extra brings it)') from None
    return out


def has_partition(out: Path, index: int, count: int) -> bool:
    emb, meta = partition_files(out, index, count)
    return emb.is_file() and meta.is_file()


def _atomic(path: Path, write: Any) -> None:
    replace_atomic(path, write, str(path))


def write_partition(out: Path, index: int, count: int, embeddings: Any, image_paths: Sequence[str]) -> None:
    """One partition, each file written whole (a crash leaves the old file or none)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb_path, meta_path = partition_files(out, index, count)
    rows = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32).astype(np.float16))
    table = pa.table({"image_path": pa.array([str(p) for p in image_paths], pa.string())})
    _atomic(meta_path, lambda fh: pq.write_table(table, fh))
    _atomic(emb_path, lambda fh: np.save(fh, rows, allow_pickle=False))
