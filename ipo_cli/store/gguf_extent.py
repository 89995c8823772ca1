"""Is a GGUF file complete? Its header says where its tensor data ends; the file must reach it.

A download cut short keeps the magic and the header, so `models add` of the first 5 KB of
a model passed every earlier check and failed later inside llama.cpp. The layout, as ggml
documents it (ggerganov/ggml docs/gguf.md, and the comment at the top of
ggml/include/gguf.h): magic "GGUF", uint32 version, uint64 tensor count, uint64 key-value
count; each key-value pair a string key, a uint32 value type and the value (an array: a
uint32 element type, a uint64 count and the elements); each tensor's info a string name, a
uint32 dimension count, uint64 dimensions, a uint32 ggml type and a uint64 offset into the
tensor data; the tensor data starts at the next multiple of `general.alignment` (default
32). Strings are a uint64 length and that many bytes. Everything is little-endian.

The header is read field by field with every count and length bounded by what the file
still holds, so a hostile header cannot make this read more than the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

# gguf_type: byte size of each scalar value type (ggml/include/gguf.h, enum gguf_type);
# 8 (STRING) and 9 (ARRAY) have a size of their own.
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS (ggml/include/ggml.h)

# ggml type -> (elements per block, bytes per block): gguf-py's GGML_QUANT_SIZES
# (ggml-org/llama.cpp gguf-py/gguf/constants.py, as gguf 0.19.0 ships it). A type missing
# here (newer than this table) counts as reaching its own offset only.
GGML_BLOCK = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}


class Malformed(Exception):
    """The header is cut short or says something no GGUF says; the message says what."""


class _Reader:
    def __init__(self, fh, size: int):
        self.fh, self.size, self.pos = fh, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise Malformed(f"the header ends inside {what} (byte {self.pos} of {self.size})")
        data = self.fh.read(n)
        if len(data) != n:
            raise Malformed(f"the header ends inside {what}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise Malformed(f"the header ends inside {what} (byte {self.pos} of {self.size})")
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def string(self, what: str) -> bytes:
        return self.take(self.u64(what), what)

    def skip_value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in _SCALAR_SIZE:
            self.skip(_SCALAR_SIZE[kind], what)
        elif kind == _STRING:
            self.skip(self.u64(what), what)
        elif kind == _ARRAY and depth == 0:
            element, count = self.u32(what), self.u64(what)
            if element in _SCALAR_SIZE:
                self.skip(count * _SCALAR_SIZE[element], what)
            else:
                if count > self.size - self.pos:  # every element takes at least one byte
                    raise Malformed(f"{what} claims {count} elements, more than the file holds")
                for _ in range(count):
                    self.skip_value(element, what, depth + 1)
        else:
            raise Malformed(f"{what} has the value type {kind}, which GGUF does not define")


def data_end(path: Path) -> tuple[int, int]:
    """(the byte where the last tensor's data ends, the file's size), from the header alone."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        r = _Reader(fh, size)
        if r.take(4, "the magic") != b"GGUF":
            raise Malformed("it does not start with GGUF")
        version = r.u32("the version")
        if version not in (2, 3):
            raise Malformed(f"GGUF version {version} (ipo reads versions 2 and 3)")
        tensors, pairs = r.u64("the tensor count"), r.u64("the metadata count")
        if tensors > size or pairs > size:  # each takes more than one byte
            raise Malformed(f"it claims {tensors} tensors and {pairs} metadata pairs, more than its {size} bytes hold")
        alignment = DEFAULT_ALIGNMENT
        for n in range(pairs):
            key = r.string(f"metadata key {n}")
            kind = r.u32(f"the type of {key[:40]!r}")
            if key == b"general.alignment" and kind == _UINT32:
                alignment = r.u32("general.alignment")
                if alignment == 0 or alignment & (alignment - 1):
                    raise Malformed(f"general.alignment is {alignment}, not a power of two")
            else:
                r.skip_value(kind, f"the value of {key[:40]!r}")
        end = 0
        for n in range(tensors):
            name = r.string(f"tensor name {n}")
            dims = r.u32(f"the dimensions of {name[:40]!r}")
            if dims > MAX_DIMS:
                raise Malformed(f"tensor {name[:40]!r} has {dims} dimensions (ggml has at most {MAX_DIMS})")
            elements = 1
            for _ in range(dims):
                elements *= r.u64(f"a dimension of {name[:40]!r}")
            ggml_type, offset = r.u32(f"the type of {name[:40]!r}"), r.u64(f"the offset of {name[:40]!r}")
            block = GGML_BLOCK.get(ggml_type)
            length = elements // block[0] * block[1] if block else 0
            end = max(end, offset + length)
        start = -(-r.pos // alignment) * alignment
        return (start + end if tensors else r.pos), size
