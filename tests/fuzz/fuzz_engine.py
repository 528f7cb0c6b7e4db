"""A small seeded mutation engine: byte-level and structure-aware mutations of a valid input.

Everything is a pure function of a ``random.Random``: input ``i`` of a campaign with seed ``S`` is
``Random(f"{S}:{i}")`` applied to the reader's seed inputs, so any input can be regenerated from
``(reader, S, i)`` alone (no state carried between inputs).
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import random
import struct
from typing import Any

# --- byte level -----------------------------------------------------------------------------------
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x2E, 0x28, 0x63, 0x52, 0x62, 0x0A, 0x22, 0x5C)
INTERESTING_INTS = (
    0,
    1,
    -1,
    2,
    7,
    255,
    256,
    65535,
    1 << 31,
    (1 << 31) - 1,
    (1 << 32) - 1,
    1 << 40,
    (1 << 63) - 1,
    1 << 62,
)


def flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_byte(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    b[rng.randrange(len(b))] = rng.choice(INTERESTING_BYTES)
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)] if data else data


def cut(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 2:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.choice((1, 2, 4, 16, 64, 256)))
    return data[:i] + data[j:]


def duplicate(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.choice((1, 4, 16, 64, 512)))
    return data[:j] + data[i:j] * rng.choice((1, 2, 8)) + data[j:]


def insert_random(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    blob = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8, 32))))
    return data[:i] + blob + data[i:]


def splice(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """The head of one input and the tail of another."""
    if not data or not other:
        return data or other
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


BYTE_MUTATIONS = (flip, set_byte, truncate, cut, duplicate, insert_random)


def mutate_bytes(data: bytes, rng: random.Random, others: list[bytes] = ()) -> bytes:
    if others and rng.random() < 0.15:
        return splice(data, rng.choice(list(others)), rng)
    return rng.choice(BYTE_MUTATIONS)(data, rng)


# --- pickle opcodes -------------------------------------------------------------------------------
# Payloads that, if anything in them ran, would create the file named by $FUZZ_MARKER (the harness
# sets it and checks for the file after every input). Written as raw opcodes so that they do not
# depend on the path: the shell and os.environ expand it at run time.
_SHELL = b'touch "$FUZZ_MARKER"'
_PY = b"open(__import__('os').environ['FUZZ_MARKER'],'w').close()"


def _bu(s: bytes) -> bytes:  # SHORT_BINUNICODE
    return b"\x8c" + bytes([len(s)]) + s


PAYLOADS = (
    b"cos\nsystem\n(V" + _SHELL + b"\ntR",  # GLOBAL + REDUCE
    b"cposix\nsystem\n(V" + _SHELL + b"\ntR",
    b"cbuiltins\neval\n(V" + _PY + b"\ntR",
    b"cbuiltins\nexec\n(V" + _PY + b"\ntR",
    b"c__builtin__\neval\n(V" + _PY + b"\ntR",
    _bu(b"os") + _bu(b"system") + b"\x93" + _bu(_SHELL) + b"\x85R",  # STACK_GLOBAL
    _bu(b"numpy")
    + _bu(b"dtypes.__builtins__.get")
    + b"\x93"
    + _bu(b"eval")
    + b"\x85R"
    + _bu(_PY)
    + b"\x85R",
    b"cnumpy\ndtypes.__builtins__\n",
    b"cbuiltins\ngetattr\n(cbuiltins\ndict\nVget\ntR",
    b"cfunctools\npartial\n(cos\nsystem\nV" + _SHELL + b"\ntR)R",
    b"coperator\nattrgetter\n(V__class__\ntR",
    b"csubprocess\ncall\n((V/bin/sh\nV-c\nV" + _SHELL + b"\nltR",
    b"cnumpy\nload\n(V/etc/hostname\ntR",
    b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(K\x00tc_codecs\nencode\n(Vb\nVlatin1\ntRtR",
    b"cnumpy\nndarray\n(J\x00\x00\x00\x10\x85tR",  # a 256M-element allocation
    b"cnumpy\ndtype\n(VO8\n\x89\x88tR",  # object dtype
    b"(cos\nsystem\nV" + _SHELL + b"\no",  # OBJ
    b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\ncbuiltins\nobject\nNtR",
    b"\x82\x01",  # EXT1
    b"P0\n",  # PERSID
    b"\x97",  # NEXT_BUFFER
    b"\x81",  # NEWOBJ
)

# opcode name -> (length struct format, offset of the length after the opcode byte)
_LEN_PREFIXED = {
    "BINUNICODE": "<I",
    "BINBYTES": "<I",
    "BINSTRING": "<i",
    "SHORT_BINUNICODE": "<B",
    "SHORT_BINBYTES": "<B",
    "SHORT_BINSTRING": "<B",
    "BINUNICODE8": "<Q",
    "BINBYTES8": "<Q",
    "BYTEARRAY8": "<Q",
    "FRAME": "<Q",
    "LONG1": "<B",
    "LONG4": "<i",
}


def ops(data: bytes) -> list[tuple[Any, Any, int]]:
    """(opcode, arg, position) of each opcode that parses; stops at the first error."""
    out = []
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            out.append((op, arg, pos))
    except Exception:  # noqa: BLE001 - a mutated pickle may not parse to the end
        pass
    return out


def _random_opcode(rng: random.Random) -> bytes:
    op = rng.choice(pickletools.opcodes)
    code = op.code.encode("latin1")
    argname = op.arg.name if op.arg is not None else None
    if argname is None:
        return code
    if argname in ("uint1", "int4", "uint2", "uint4", "uint8"):
        size = {"uint1": 1, "uint2": 2, "int4": 4, "uint4": 4, "uint8": 8}[argname]
        n = rng.choice(INTERESTING_INTS) % (1 << (8 * size))
        return code + n.to_bytes(size, "little")
    if argname.startswith("string") or argname.startswith("bytes") or argname.startswith("unicode"):
        body = rng.choice((b"", b"x", b"os", b"system", b"numpy", b"\xff" * 4))
        fmt = {
            "unicodestring1": "<B",
            "unicodestring4": "<I",
            "unicodestring8": "<Q",
            "bytes1": "<B",
            "bytes4": "<I",
            "bytes8": "<Q",
            "string1": "<B",
            "string4": "<i",
            "bytearray8": "<Q",
        }.get(argname)
        if fmt:
            return code + struct.pack(fmt, len(body)) + body
        return code + body + b"\n"
    if argname in ("decimalnl_short", "decimalnl_long", "floatnl"):
        return (
            code
            + rng.choice((b"0", b"1", b"-1", b"99999999999999999999", b"nan", b"1e400"))
            + b"\n"
        )
    if argname == "float8":
        return code + struct.pack(">d", rng.choice((0.0, float("nan"), float("inf"), 1e308)))
    if argname in ("long1", "long4"):
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 8))))
        return (
            code
            + (struct.pack("<B", len(body)) if argname == "long1" else struct.pack("<i", len(body)))
            + body
        )
    if argname == "stringnl_noescape_pair":
        return code + rng.choice(
            (b"numpy\ndtype\n", b"builtins\ndict\n", b"os\nsystem\n", b"numpy\nndarray\n")
        )
    return code + b"x\n"


def grow_length(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one length field (strings, bytes, frames, longs) to a larger, smaller or huge
    value."""
    cands = [(op, pos) for op, _, pos in ops(data) if op.name in _LEN_PREFIXED]
    if not cands:
        return flip(data, rng)
    op, pos = rng.choice(cands)
    fmt = _LEN_PREFIXED[op.name]
    size = struct.calcsize(fmt)
    start = pos + 1
    (old,) = struct.unpack(fmt, data[start : start + size])
    bits = 8 * size - (1 if fmt[-1].islower() and fmt[-1] != "b" and fmt[-1] in "iq" else 0)
    new = rng.choice((old + 1, old * 2 + 1, old - 1, 0, (1 << bits) - 1, old + 4096, old << 8))
    new = (
        max(-(1 << bits), min(new, (1 << bits) - 1))
        if fmt[-1] in "iq"
        else max(0, min(new, (1 << (8 * size)) - 1))
    )
    return data[:start] + struct.pack(fmt, new) + data[start + size :]


def insert_opcode(data: bytes, rng: random.Random) -> bytes:
    """An opcode (random, or a code-execution payload) at an opcode boundary."""
    positions = [pos for _, _, pos in ops(data)] or [0]
    i = rng.choice(positions)
    blob = rng.choice(PAYLOADS) if rng.random() < 0.5 else _random_opcode(rng)
    return data[:i] + blob + data[i:]


def drop_opcode(data: bytes, rng: random.Random) -> bytes:
    found = ops(data)
    if len(found) < 2:
        return cut(data, rng)
    k = rng.randrange(len(found) - 1)
    return data[: found[k][2]] + data[found[k + 1][2] :]


def dup_opcode(data: bytes, rng: random.Random) -> bytes:
    found = ops(data)
    if len(found) < 2:
        return duplicate(data, rng)
    k = rng.randrange(len(found) - 1)
    a, b = found[k][2], found[k + 1][2]
    return data[:b] + data[a:b] * rng.choice((1, 2, 16)) + data[b:]


def replace_strings(data: bytes, rng: random.Random) -> bytes:
    """Swap a dtype string / global name / shape-bearing text for another one of the same family."""
    swaps = (
        (b"<f4", (b"<f8", b"|O", b"<c8", b"|b1", b"<U4", b"|V4", b"<M8", b">f4", b"<f2", b"<i8")),
        (b"f4", (b"O8", b"V4", b"U1", b"f8", b"i4", b"S9", b"M8")),
        (b"<i8", (b"<u8", b"|O", b"<f4")),
        (b"ndarray", (b"matrix", b"recarray", b"memmap")),
        (b"_reconstruct", (b"_frombuffer", b"scalar", b"empty", b"zeros")),
        (b"dtype", (b"load", b"fromfile", b"frombuffer")),
        (b"multiarray", (b"numeric", b"_multiarray_umath")),
        (b"latin1", (b"utf-8", b"rot13", b"zlib")),
    )
    present = [(a, bs) for a, bs in swaps if a in data]
    if not present:
        return flip(data, rng)
    a, bs = rng.choice(present)
    b = rng.choice(bs)
    count = data.count(a)
    k = rng.randrange(count)
    idx = -1
    for _ in range(k + 1):
        idx = data.index(a, idx + 1)
    out = data[:idx] + b + data[idx + len(a) :]
    if (
        len(a) != len(b) and idx > 0 and data[idx - 1] == len(a)
    ):  # keep a SHORT_BINUNICODE length right
        out = out[: idx - 1] + bytes([len(b)]) + out[idx:]
    return out


PICKLE_MUTATIONS = (grow_length, insert_opcode, drop_opcode, dup_opcode, replace_strings)


# --- JSON / YAML / CSV helpers --------------------------------------------------------------------
WEIRD_VALUES = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    2**64 + 1,
    -(2**63),
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    0.5,
    "",
    "x",
    "../../x.parquet",
    "/etc/hostname",
    "[/]evil",
    "a\nb",
    "\x00",
    "é" * 3,
    [],
    [1, 2],
    {},
    {"a": 1},
    [[[[[]]]]],
    "1e999",
    "NaN",
)


def weird(rng: random.Random) -> Any:
    v = rng.choice(WEIRD_VALUES)
    return json.loads(json.dumps(v)) if isinstance(v, (list, dict)) else v


def paths_of(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON-like tree."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_of(v, (*prefix, i))
    return out


def get_path(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_path(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = get_path(obj, path[:-1])
    parent[path[-1]] = value
    return obj


def del_path(obj: Any, path: tuple) -> Any:
    if not path:
        return obj
    parent = get_path(obj, path[:-1])
    del parent[path[-1]]
    return obj


def numeric_nudge(v: Any, rng: random.Random) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return weird(rng)
    return rng.choice((v + 1, v - 1, v * 2, -v, v * 1000, 0, v * 1e30, float(v) + 0.5))


def mutate_tree(obj: Any, rng: random.Random) -> Any:
    """One structural change to a JSON-like tree: a value replaced, nudged, deleted, a key added,
    a subtree copied somewhere else, or a container wrapped."""
    obj = json.loads(json.dumps(obj, allow_nan=True))
    paths = paths_of(obj)
    path = rng.choice(paths)
    r = rng.random()
    if r < 0.3:
        return set_path(obj, path, weird(rng))
    if r < 0.5:
        return set_path(obj, path, numeric_nudge(get_path(obj, path), rng))
    if r < 0.65 and path:
        return del_path(obj, path)
    if r < 0.8:
        target = get_path(obj, path)
        if isinstance(target, dict):
            target[rng.choice(("extra", "", "__class__", "0", str(rng.randrange(9))))] = weird(rng)
            return obj
        if isinstance(target, list):
            target.append(weird(rng))
            return obj
        return set_path(obj, path, [target] if rng.random() < 0.5 else {"v": target})
    other = get_path(obj, rng.choice(paths))
    return set_path(obj, path, json.loads(json.dumps(other, allow_nan=True)))


def duplicate_json_key(text: str, rng: random.Random) -> str:
    """Repeat one ``"key": value`` member inside its object (the last one wins in json.loads)."""
    idxs = [
        i
        for i in range(len(text))
        if text.startswith('"', i) and text[i - 1 : i] in ("{", " ", "\n")
    ]
    if not idxs:
        return text
    i = rng.choice(idxs)
    j = text.find(",", i)
    if j < 0:
        return text
    return text[: j + 1] + text[i : j + 1] + text[j + 1 :]


def pickle_object(obj: Any, rng: random.Random) -> bytes:
    return pickle.dumps(obj, protocol=rng.choice((0, 1, 2, 3, 4, 5)))
