"""The pickle gate: a pass over a pickle's opcodes, before any unpickler sees it, that
bounds what loading it could cost.

A pickle's size says little about what loading it costs. CPython's C unpickler (which
`pickle.Unpickler`, and so any subclass, is) keeps its memo in an array and, for a PUT
whose index is past the end, resizes it to twice that index (python/cpython
Modules/_pickle.c, `_Unpickler_MemoPut`: `_Unpickler_ResizeMemoList(self, idx * 2)`): an
11-byte `LONG_BINPUT 2**27` costs 2 GiB. Each one-byte `EMPTY_DICT` is a 64-byte dict, so
16 MB of them are a gigabyte. This pass walks the opcodes as `pickletools.genops` does
(the argument of each opcode from `pickletools.opcodes`: a fixed width, a line, two lines,
or a length prefix of 1, 4 or 8 bytes), building nothing, and refuses:

- a memo index beyond the number of objects memoized so far: a pickler always numbers
  them in order (python/cpython Lib/pickle.py, `Pickler.memoize`: `idx = len(self.memo)`,
  written by `put` as BINPUT, LONG_BINPUT or, from protocol 4, MEMOIZE), so the memo of a
  real file never has a gap;
- a length prefix past the end of the file, an opcode pickle does not have, no STOP;
- opcodes that need what ipo never gives (out-of-band buffers, persistent ids);
- a file whose load would build more than `HEAP_FACTOR` times its size plus
  `HEAP_SLACK` bytes of objects, by a cost per opcode that is an upper bound of what the C
  unpickler allocates for it (a new object or container `OBJECT_COST`, a reference
  `REF_COST`, a string four bytes a byte: one astral character makes a str four bytes a
  character). A real sample file (Dassl `Datum` records) costs about 13 times its size.

It is a pass in Python: about 0.65 s for 3.7 million opcodes (a 17 MB file of 200,000
records; the C load of the same file takes 0.3 s).
"""

from __future__ import annotations

import pickletools

from ipo_cli.errors import InvalidInput

HEAP_FACTOR = 24
HEAP_SLACK = 32 << 20
OBJECT_COST = 100  # an object, a container, an int or a float: header, slot and a dict/set entry
REF_COST = 16  # a reference pushed again (GET, DUP): a stack slot and a list slot
MEMO_COST = 16  # a memo slot (the C memo array grows to twice the index)

_FIXED, _LINE, _TWO_LINES, _COUNTED = 0, 1, 2, 3
_REFUSED = {"NEXT_BUFFER", "READONLY_BUFFER", "PERSID", "BINPERSID"}
_REFS = {"GET", "BINGET", "LONG_BINGET", "DUP"}
_FREE = {"PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
         "ADDITEMS", "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
            "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_WIDTH = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
          pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}


_MEMO_PUT, _STRING, _REFUSE, _STOP, _MEMOIZE, _SIGNED, _FRAME = 1, 2, 4, 8, 16, 32, 64


def _table() -> tuple[list[tuple[int, int, int, int] | None], list[str]]:
    """Per opcode byte: (argument kind, width, cost, flags), from pickletools' own table,
    and the opcode names (for messages)."""
    table: list[tuple[int, int, int, int] | None] = [None] * 256
    names = [""] * 256
    for info in pickletools.opcodes:
        arg = info.arg
        if arg is None:
            kind, width = _FIXED, 0
        elif arg.n >= 0:
            kind, width = _FIXED, arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            kind, width = (_TWO_LINES if arg.name == "stringnl_noescape_pair" else _LINE), 0
        else:
            kind, width = _COUNTED, _WIDTH[arg.n]
        name = info.name
        cost = 0 if name in _FREE else REF_COST if name in _REFS else OBJECT_COST
        flags = ((_MEMO_PUT if name in ("PUT", "BINPUT", "LONG_BINPUT") else 0)
                 | (_STRING if name in _STRINGS else 0) | (_REFUSE if name in _REFUSED else 0)
                 | (_STOP if name == "STOP" else 0) | (_MEMOIZE if name == "MEMOIZE" else 0)
                 | (_SIGNED if name in ("LONG4", "BINSTRING") else 0) | (_FRAME if name == "FRAME" else 0))
        if flags & (_MEMO_PUT | _MEMOIZE):
            cost += MEMO_COST
        table[ord(info.code)] = (kind, width, cost, flags)
        names[ord(info.code)] = name
    return table, names


_TABLE, _NAMES = _table()


def check(data: bytes, source: str, hint: str | None = None, what: str = "a pickle ipo reads") -> int:
    """Refuse (InvalidInput, one line naming `source`) a pickle whose load could cost more
    than its size allows, as the module docstring says; returns the estimated cost."""
    end = len(data)
    budget = HEAP_FACTOR * end + HEAP_SLACK
    pos = cost = memoized = 0
    find = data.find
    table = _TABLE

    kind_of_file = what

    def refuse(reason: str, at: int) -> InvalidInput:
        return InvalidInput(f"{source} is not {kind_of_file}: {reason} at byte {at}", hint)

    while pos < end:
        start = pos
        entry = table[data[pos]]
        if entry is None:
            raise refuse(f"opcode {data[pos]:#04x} is not a pickle opcode", start)
        kind, width, op_cost, flags = entry
        pos += 1
        if kind == _FIXED:
            if flags:
                if flags & _MEMO_PUT:  # BINPUT, LONG_BINPUT: the next index (or an earlier one)
                    index = int.from_bytes(data[pos:pos + width], "little")
                    if index > memoized:
                        raise refuse(f"{_NAMES[data[start]]} {index} skips memo slots (only {memoized} objects "
                                     "memoized)", start)
                    memoized += index == memoized
                elif flags & _MEMOIZE:
                    memoized += 1
                elif flags & _STOP:
                    return cost
                elif flags & _REFUSE:
                    raise refuse(f"{_NAMES[data[start]]} (data from outside the file) is not allowed", start)
            pos += width
        elif kind == _COUNTED:
            size = int.from_bytes(data[pos:pos + width], "little", signed=bool(flags & _SIGNED))
            pos += width
            if size < 0 or pos + size > end:
                raise refuse(f"{_NAMES[data[start]]} says {size} bytes follow, but {max(end - pos, 0)} do", start)
            pos += size
            if not flags & _FRAME:
                op_cost += 4 * size if flags & _STRING else size
        else:
            line_end = find(b"\n", pos)
            if kind == _TWO_LINES and line_end >= 0:
                line_end = find(b"\n", line_end + 1)
            if line_end < 0:
                raise refuse(f"{_NAMES[data[start]]} has no end of line", start)
            if flags & _MEMO_PUT:  # PUT: a decimal index
                text = data[pos:line_end]
                if not text.isdigit() or len(text) > 12 or int(text) > memoized:
                    raise refuse(f"PUT {text[:20]!r} skips memo slots (only {memoized} objects memoized)", start)
                memoized += int(text) == memoized
            elif flags & _REFUSE:
                raise refuse(f"{_NAMES[data[start]]} (data from outside the file) is not allowed", start)
            else:
                op_cost += (line_end - pos) * (4 if flags & _STRING else 1)
            pos = line_end + 1
        cost += op_cost
        if cost > budget:
            raise refuse(f"loading it would build more than {HEAP_FACTOR} times its size in objects "
                         f"(over {budget >> 20} MiB)", start)
    raise refuse("it ends without STOP", end)
