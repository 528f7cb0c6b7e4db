"""Attacks on the restricted unpickler (feature_store.ingest.safe_load_pickle).

Each payload is hand-assembled from raw pickle opcodes. Each would run code or allocate far more
than its file holds under a naive or prefix-based unpickler; each must be refused with a DataError
naming the file, with nothing run (a marker file must not exist). Each is tried alone and wrapped
inside an otherwise valid MMSA dataset, the form in which ingest would have written a store and
exited 0. A representative subset also goes through the ``msaflow data ingest`` CLI.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msaflow.feature_store import DataError, ingest, safe_load_pickle
from msaflow.feature_store.ingest import BUDGET_FLOOR

P = pickle
REAL_PKL = Path("/work/shared/data/mosi_bclstm_utterance.pkl")
MSAFLOW = Path(sys.executable).parent / "msaflow"


# -- opcode assembly -------------------------------------------------------------------------------
def s(x: str) -> bytes:
    b = x.encode()
    return (
        P.SHORT_BINUNICODE + bytes([len(b)]) + b
        if len(b) < 256
        else P.BINUNICODE + struct.pack("<I", len(b)) + b
    )


def by(b: bytes) -> bytes:
    return (
        P.SHORT_BINBYTES + bytes([len(b)]) + b
        if len(b) < 256
        else P.BINBYTES + struct.pack("<I", len(b)) + b
    )


def i(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def g(module: str, name: str, how: str = "stack") -> bytes:
    """A global, by STACK_GLOBAL (protocol 4+) or by the text GLOBAL opcode."""
    if how == "stack":
        return s(module) + s(name) + P.STACK_GLOBAL
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def call(func: bytes, *args: bytes) -> bytes:
    return func + P.MARK + b"".join(args) + P.TUPLE + P.REDUCE


def put(k: int) -> bytes:
    return P.LONG_BINPUT + struct.pack("<I", k)


def get(k: int) -> bytes:
    return P.LONG_BINGET + struct.pack("<I", k)


def code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


def dtype_(spec: str, order: str = "<", flags: int = 0, copy: bool = False) -> bytes:
    """numpy.dtype(spec, False, copy) then BUILD with a (possibly forged) state, as numpy writes
    it."""
    return (
        call(g("numpy", "dtype"), s(spec), P.NEWFALSE, P.NEWTRUE if copy else P.NEWFALSE)
        + P.MARK
        + P.BININT1
        + b"\x03"
        + s(order)
        + P.NONE
        + P.NONE
        + P.NONE
        + i(-1)
        + i(-1)
        + i(flags)
        + P.TUPLE
        + P.BUILD
    )


def reconstruct(shape: tuple[int, ...] = (0,), core: str = "numpy._core.multiarray") -> bytes:
    return call(
        g(core, "_reconstruct"),
        g("numpy", "ndarray"),
        P.MARK + b"".join(i(n) for n in shape) + P.TUPLE,
        by(b"b"),
    )


def array(shape: tuple[int, ...], dt: bytes, raw: bytes) -> bytes:
    """An array the way numpy pickles it: _reconstruct + BUILD (1, shape, dtype, fortran, bytes)."""
    return (
        reconstruct()
        + P.MARK
        + P.BININT1
        + b"\x01"
        + P.MARK
        + b"".join(i(n) for n in shape)
        + P.TUPLE
        + dt
        + P.NEWFALSE
        + raw
        + P.TUPLE
        + P.BUILD
    )


def blob(body: bytes, proto: int = 4) -> bytes:
    return P.PROTO + bytes([proto]) + body + P.STOP


# -- a valid MMSA dataset to hide a payload in -----------------------------------------------------
class _Raw:
    def __init__(self, body: bytes):
        self.body = body


class _Splicer(pickle._Pickler):
    """The stdlib pure-Python pickler, writing a _Raw's opcodes verbatim where it stands."""

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[_Raw] = lambda self, obj: self.write(obj.body)


def dataset() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        out[split] = {
            m: rng.standard_normal((n, 2, d)).astype(np.float32)
            for m, d in (("text", 3), ("audio", 2), ("vision", 2))
        }
        out[split]["regression_labels"] = rng.uniform(-3, 3, n).astype(np.float32)
        out[split]["id"] = np.array([f"{split}vid$_${k}" for k in range(n)])
    return out


def wrapped(body: bytes, where: tuple[str, ...] = ("train", "note")) -> bytes:
    """``body`` (one object's opcodes) as an extra field of a valid MMSA dataset, protocol 3 opcodes
    around it; memo-free (``fast``) so a payload's own PUT/GET indices cannot collide. A PROTO 4
    opcode in mid-stream switches the stdlib unpickler to protocol 4, where names may be dotted."""
    data = dataset()
    node = data
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = _Raw(P.PROTO + b"\x04" + body)
    buf = io.BytesIO()
    pickler = _Splicer(buf, protocol=3)
    pickler.fast = True
    pickler.dump(data)
    return buf.getvalue()


def assert_refused(
    tmp_path: Path,
    data: bytes,
    match: str | None = None,
    name: str = "evil.pkl",
    malformed: bool = False,
) -> DataError:
    """safe_load_pickle and ingest both refuse, naming the file; nothing ran, nothing was written.
    Unless ``malformed``, the refusal is a deliberate rule's, not a parse failure by the way."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        safe_load_pickle(path)
    err = info.value
    assert err.field == "pickle" and str(path) in str(err), str(err)
    assert "\n" not in str(err)
    if match:
        assert match in str(err), str(err)
    assert malformed or "uncorrupted" not in str(err), str(err)
    with pytest.raises(DataError):
        ingest("mmsa", path, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "PWNED").exists(), "the payload ran"
    return err


# -- the payloads ----------------------------------------------------------------------------------
def _eval_via(getter: bytes) -> callable:
    """getter yields dict.get of some module's builtins: get('eval')(code)."""
    return lambda m: call(call(getter, s("eval")), s(code(m)))


# Dotted attribute paths through modules the old allowlist admitted (or could be made to).
DOTTED = [
    ("numpy", "dtypes.__builtins__.get"),  # the 117-byte exploit
    ("numpy", "dtypes.Float32DType.__init__.__globals__.get"),
    ("numpy._core.multiarray", "__builtins__.get"),
    ("numpy.core.multiarray", "__builtins__.get"),
    ("numpy.dtypes", "__builtins__.get"),
    ("collections", "namedtuple.__builtins__.get"),
    ("collections", "OrderedDict.__init__.__globals__.get"),
    ("numpy", "ndarray.__reduce__.__globals__.get"),
    ("builtins", "dict.get"),
    ("_codecs", "encode.__self__.lookup"),
]


def _direct(module: str, name: str, *args: bytes) -> callable:
    return lambda m, how="stack": call(g(module, name, how), *(args or (s(code(m)),)))


PAYLOADS: dict[str, callable] = {
    # forbidden callables by exact name
    "builtins.eval": lambda m, how="stack": call(g("builtins", "eval", how), s(code(m))),
    "builtins.exec": lambda m, how="stack": call(g("builtins", "exec", how), s(code(m))),
    "__builtin__.eval": lambda m, how="stack": call(g("__builtin__", "eval", how), s(code(m))),
    "builtins.__import__": lambda m, how="stack": call(g("builtins", "__import__", how), s("os")),
    "builtins.open": lambda m, how="stack": call(g("builtins", "open", how), s(str(m)), s("w")),
    "builtins.getattr": lambda m, how="stack": call(
        g("builtins", "getattr", how), g("numpy", "dtype", how), s("__setstate__")
    ),
    "builtins.compile": _direct("builtins", "compile", s("1"), s("x"), s("eval")),
    "builtins.object": lambda m, how="stack": call(g("builtins", "object", how)),
    "builtins.type": _direct("builtins", "type", s("X"), P.EMPTY_TUPLE, P.EMPTY_DICT),
    "builtins.slice": _direct("builtins", "slice", i(1)),
    "functools.partial": lambda m, how="stack": call(
        call(g("functools", "partial", how), g("builtins", "eval", how), s(code(m)))
    ),
    "functools.reduce": lambda m, how="stack": call(
        g("functools", "reduce", how), g("builtins", "eval", how), P.MARK + s(code(m)) + P.LIST
    ),
    "operator.attrgetter": lambda m, how="stack": call(
        call(g("operator", "attrgetter", how), s("__builtins__")), g("numpy", "dtypes", how)
    ),
    "operator.methodcaller": lambda m, how="stack": call(
        call(g("operator", "methodcaller", how), s("get"), s("eval")), P.EMPTY_DICT
    ),
    "operator.itemgetter": lambda m, how="stack": call(
        call(g("operator", "itemgetter", how), s("eval")), P.EMPTY_DICT
    ),
    "codecs.open": _direct("codecs", "open", s("/etc/hostname")),
    "codecs.decode": _direct("codecs", "decode", by(b"x"), s("hex")),
    "_codecs.encode(hex)": lambda m, how="stack": call(
        g("_codecs", "encode", how), s("ab"), s("hex_codec")
    ),
    "_codecs.encode(non-str)": lambda m, how="stack": call(
        g("_codecs", "encode", how), P.EMPTY_LIST, s("latin1")
    ),
    "os.system": lambda m, how="stack": call(g("os", "system", how), s(f"touch {m}")),
    "posix.system": lambda m, how="stack": call(g("posix", "system", how), s(f"touch {m}")),
    "subprocess.Popen": lambda m, how="stack": call(g("subprocess", "Popen", how), s(f"touch {m}")),
    "subprocess.check_output": lambda m, how="stack": call(
        g("subprocess", "check_output", how), P.MARK + s("touch") + s(str(m)) + P.LIST
    ),
    "pickle.loads": lambda m, how="stack": call(g("pickle", "loads", how), by(pickle.dumps(1))),
    "_pickle.loads": lambda m, how="stack": call(g("_pickle", "loads", how), by(pickle.dumps(1))),
    "marshal.loads": lambda m, how="stack": call(g("marshal", "loads", how), by(b"N")),
    "runpy._run_code": lambda m, how="stack": call(
        g("runpy", "_run_code", how), s(code(m)), P.EMPTY_DICT
    ),
    "importlib.import_module": lambda m, how="stack": call(
        g("importlib", "import_module", how), s("os")
    ),
    "sys.modules": lambda m, how="stack": g("sys", "modules", how),
    "copyreg._reconstructor": lambda m, how="stack": call(
        g("copyreg", "_reconstructor", how),
        g("builtins", "object", how),
        g("builtins", "object", how),
        P.NONE,
    ),
    "copy_reg._reconstructor": lambda m, how="stack": call(
        g("copy_reg", "_reconstructor", how),
        g("__builtin__", "object", how),
        g("__builtin__", "object", how),
        P.NONE,
    ),
    "copyreg.__newobj__": lambda m, how="stack": call(
        g("copyreg", "__newobj__", how), g("builtins", "object", how)
    ),
    "numpy.load": lambda m, how="stack": call(g("numpy", "load", how), s(str(m))),
    "numpy.lib.format.read_array": lambda m, how="stack": call(
        g("numpy.lib.format", "read_array", how), P.NONE
    ),
    "numpy.lib.npyio.load": lambda m, how="stack": call(
        g("numpy.lib.npyio", "load", how), s(str(m))
    ),
    "numpy.frombuffer(object)": lambda m, how="stack": call(
        g("numpy", "frombuffer", how), by(b"\0" * 8), s("O")
    ),
    "numpy.fromfile": lambda m, how="stack": call(g("numpy", "fromfile", how), s("/etc/hostname")),
    "numpy.ndarray(shape)": lambda m, how="stack": call(
        g("numpy", "ndarray", how), P.MARK + i(1 << 20) + i(64) + P.TUPLE, s("f8")
    ),
    "numpy.empty": lambda m, how="stack": call(g("numpy", "empty", how), i(1 << 28)),
    "numpy.dtypes.Float32DType()": lambda m, how="stack": call(
        g("numpy.dtypes", "Float32DType", how)
    ),
    "numpy.dtypes.ObjectDType": lambda m, how="stack": g("numpy.dtypes", "ObjectDType", how),
    "numpy.dtypes.VoidDType": lambda m, how="stack": g("numpy.dtypes", "VoidDType", how),
    "numpy.dtypes.StringDType": lambda m, how="stack": g("numpy.dtypes", "StringDType", how),
    "numpy.dtype(object)": lambda m, how="stack": call(
        g("numpy", "dtype", how), s("O8"), P.NEWFALSE, P.NEWTRUE
    ),
    "numpy.dtype(void)": lambda m, how="stack": call(
        g("numpy", "dtype", how), s("V8"), P.NEWFALSE, P.NEWTRUE
    ),
    "numpy.dtype(list)": lambda m, how="stack": call(
        g("numpy", "dtype", how),
        P.MARK + P.MARK + s("a") + s("O") + P.TUPLE + P.LIST,
        P.NEWFALSE,
        P.NEWTRUE,
    ),
    "ndarray via OrderedDict(args)": lambda m, how="stack": call(
        g("collections", "OrderedDict", how), P.MARK + P.MARK + s("a") + i(1) + P.TUPLE + P.LIST
    ),
    "bytearray(huge int)": lambda m, how="stack": call(g("builtins", "bytearray", how), i(1 << 30)),
    "set(ndarray class)": lambda m, how="stack": call(
        g("builtins", "set", how), g("numpy", "ndarray", how)
    ),
}

# Object arrays and scalars, and bad array states: every route that numpy itself would accept.
ARRAYS: dict[str, callable] = {
    "object array via _reconstruct+BUILD": lambda m: array(
        (1,),
        call(g("numpy", "dtype"), s("O8"), P.NEWFALSE, P.NEWTRUE),
        P.MARK + call(g("builtins", "eval"), s(code(m))) + P.LIST,
    ),
    "object scalar": lambda m: call(
        g("numpy._core.multiarray", "scalar"),
        call(g("numpy", "dtype"), s("O8"), P.NEWFALSE, P.NEWTRUE),
        s(code(m)),
    ),
    "object frombuffer (protocol 5)": lambda m: call(
        g("numpy._core.numeric", "_frombuffer"),
        by(b"\0" * 8),
        call(g("numpy", "dtype"), s("O8"), P.NEWFALSE, P.NEWTRUE),
        P.MARK + i(1) + P.TUPLE,
        s("C"),
    ),
    "_reconstruct huge shape": lambda m: reconstruct((1 << 20, 1 << 12)),
    "_reconstruct numpy.core spelling huge": lambda m: reconstruct(
        (1 << 30,), core="numpy.core.multiarray"
    ),
    "_reconstruct of another class": lambda m: call(
        g("numpy._core.multiarray", "_reconstruct"),
        g("numpy", "dtype"),
        P.MARK + i(0) + P.TUPLE,
        by(b"b"),
    ),
    "BUILD huge declared shape": lambda m: array((1 << 20, 1 << 10), dtype_("f4"), by(b"\0" * 16)),
    "BUILD negative shape": lambda m: array((-1, 4), dtype_("f4"), by(b"\0" * 16)),
    "BUILD shape/bytes mismatch": lambda m: array((2, 2), dtype_("f4"), by(b"\0" * 15)),
    "BUILD list as array bytes": lambda m: array((1,), dtype_("f8"), P.MARK + i(1) + P.LIST),
    "BUILD twice on one array": lambda m: (
        array((1,), dtype_("f4"), by(b"\0" * 4))
        + P.MARK
        + P.BININT1
        + b"\x01"
        + P.MARK
        + i(1 << 20)
        + P.TUPLE
        + dtype_("f4")
        + P.NEWFALSE
        + by(b"\0" * 4)
        + P.TUPLE
        + P.BUILD
    ),
    "BUILD structured dtype state": lambda m: (
        call(g("numpy", "dtype"), s("f8"), P.NEWFALSE, P.NEWTRUE)
        + P.MARK
        + P.BININT1
        + b"\x03"
        + s("|")
        + P.NONE
        + P.MARK
        + s("a")
        + P.TUPLE
        + P.EMPTY_DICT
        + i(8)
        + i(1)
        + i(0)
        + P.TUPLE
        + P.BUILD
    ),
    "frombuffer shape larger than bytes": lambda m: call(
        g("numpy._core.numeric", "_frombuffer"),
        by(b"\0" * 8),
        dtype_("f8"),
        P.MARK + i(1 << 30) + P.TUPLE,
        s("C"),
    ),
    "scalar of wrong size": lambda m: call(
        g("numpy._core.multiarray", "scalar"), dtype_("U1000000"), by(b"x")
    ),
}

# Opcodes that build arbitrary objects or reach outside the file, refused outright.
OPCODES: dict[str, callable] = {
    "INST": lambda m: P.MARK + s(f"touch {m}") + P.INST + b"os\nsystem\n",
    "OBJ": lambda m: P.MARK + g("os", "system") + s(f"touch {m}") + P.OBJ,
    "NEWOBJ": lambda m: g("builtins", "object") + P.EMPTY_TUPLE + P.NEWOBJ,
    "NEWOBJ_EX": lambda m: g("builtins", "object") + P.EMPTY_TUPLE + P.EMPTY_DICT + P.NEWOBJ_EX,
    "EXT1": lambda m: P.EXT1 + b"\x01",
    "EXT2": lambda m: P.EXT2 + b"\x01\x00",
    "EXT4": lambda m: P.EXT4 + b"\x01\x00\x00\x00",
    "PERSID": lambda m: P.PERSID + b"os.system\n",
    "BINPERSID": lambda m: s("os.system") + P.BINPERSID,
    "NEXT_BUFFER": lambda m: P.NEXT_BUFFER,
    "READONLY_BUFFER": lambda m: by(b"x") + P.READONLY_BUFFER,
    "unknown opcode 0xff": lambda m: b"\xff",
    "BUILD on a dict (set attributes)": lambda m: (
        P.EMPTY_DICT + P.MARK + s("__class__") + g("numpy", "ndarray") + P.DICT + P.BUILD
    ),
    "BUILD on a list": lambda m: P.EMPTY_LIST + P.EMPTY_DICT + P.BUILD,
    "BUILD on the ndarray class": lambda m: (
        g("numpy", "ndarray")
        + P.MARK
        + P.EMPTY_DICT
        + P.MARK
        + s("__reduce__")
        + g("numpy", "dtype")
        + P.DICT
        + P.TUPLE
        + P.BUILD
    ),
    "BUILD on numpy.dtype class": lambda m: (
        g("numpy", "dtype") + P.MARK + s("newbyteorder") + P.NONE + P.DICT + P.BUILD
    ),
    "BUILD on a function": lambda m: (
        g("_codecs", "encode") + P.MARK + s("__code__") + P.NONE + P.DICT + P.BUILD
    ),
    "SETITEM on an array": lambda m: (
        array((2,), dtype_("f4"), by(b"\0" * 8)) + i(0) + i(1) + P.SETITEM
    ),
    "SETITEMS on a class": lambda m: g("numpy", "ndarray") + P.MARK + s("x") + i(1) + P.SETITEMS,
    "APPENDS on a bytearray": lambda m: (
        call(g("builtins", "bytearray"), by(b"x")) + P.MARK + i(1) + P.APPENDS
    ),
    "ADDITEMS on a list": lambda m: P.EMPTY_LIST + P.MARK + i(1) + P.ADDITEMS,
    "reference cycle": lambda m: P.EMPTY_LIST + put(7) + get(7) + P.APPEND,
}


def _ids(d: dict) -> list[str]:
    return list(d)


@pytest.mark.parametrize("how", ["stack", "global"])
@pytest.mark.parametrize("module, name", DOTTED, ids=[f"{m}:{n}" for m, n in DOTTED])
@pytest.mark.parametrize("form", ["alone", "wrapped"])
def test_dotted_names_are_refused(tmp_path, module, name, how, form):
    marker = tmp_path / "PWNED"
    body = _eval_via(g(module, name, how))(marker)
    data = blob(body) if form == "alone" else wrapped(body)
    assert_refused(tmp_path, data, match="dotted name")


@pytest.mark.parametrize("how", ["stack", "global"])
@pytest.mark.parametrize("payload", _ids(PAYLOADS))
@pytest.mark.parametrize("form", ["alone", "wrapped"])
def test_forbidden_globals_and_calls_are_refused(tmp_path, payload, how, form):
    body = PAYLOADS[payload](tmp_path / "PWNED", how)
    assert_refused(tmp_path, blob(body) if form == "alone" else wrapped(body))


@pytest.mark.parametrize("payload", _ids(ARRAYS))
@pytest.mark.parametrize("form", ["alone", "wrapped"])
def test_object_arrays_and_bad_array_states_are_refused(tmp_path, payload, form):
    body = ARRAYS[payload](tmp_path / "PWNED")
    assert_refused(tmp_path, blob(body) if form == "alone" else wrapped(body))


@pytest.mark.parametrize("payload", _ids(OPCODES))
@pytest.mark.parametrize("form", ["alone", "wrapped"])
def test_object_building_opcodes_are_refused(tmp_path, payload, form):
    body = OPCODES[payload](tmp_path / "PWNED")
    assert_refused(tmp_path, blob(body) if form == "alone" else wrapped(body))


def test_protocol0_text_exploit_is_refused(tmp_path):
    """The classic one: cos\\nsystem\\n(S'...'\\ntR."""
    assert_refused(
        tmp_path, f"cos\nsystem\n(S'touch {tmp_path / 'PWNED'}'\ntR.".encode(), match="os.system"
    )


# -- amplification ---------------------------------------------------------------------------------
def _split_refs(feat: bytes, n: int) -> bytes:
    """An MMSA split whose three modalities are ``feat`` (a memo GET or an array) and n
    labels/ids."""
    return (
        P.EMPTY_DICT
        + P.MARK
        + s("text")
        + feat
        + s("audio")
        + feat
        + s("vision")
        + feat
        + s("regression_labels")
        + array((n,), dtype_("f4"), by(b"\0" * 4 * n))
        + s("id")
        + P.MARK
        + b"".join(s(f"v$_${k}") for k in range(n))
        + P.LIST
        + P.SETITEMS
    )


def test_memo_reuse_across_splits_is_refused(tmp_path):
    """One real 4 MiB array, memoised and referenced 9 times per split in 3 splits, and in a list 20
    times: the result reaches ~100x its file. (The old loader accepted it and wrote the store.)"""
    n = 1 << 10
    feat = array(
        (n, 1, 1024),
        dtype_("f4"),
        P.BINBYTES + struct.pack("<I", 4 * n * 1024) + b"\0" * (4 * n * 1024),
    )
    body = (
        P.EMPTY_DICT
        + P.MARK
        + s("train")
        + _split_refs(feat + put(9), n)
        + s("valid")
        + _split_refs(get(9), n)
        + s("test")
        + _split_refs(get(9), n)
        + s("extra")
        + P.MARK
        + get(9) * 20
        + P.LIST
        + P.SETITEMS
    )
    err = assert_refused(tmp_path, blob(body), match="memo references counted")
    assert "budget" in str(err)


def test_nested_list_amplification_is_refused(tmp_path):
    """A list of 10^3 references to a list of 10^3 references to 10^3 floats: a few KB that
    np.asarray would turn into 8 GB."""
    body = (
        P.MARK
        + (P.BINFLOAT + struct.pack(">d", 1.0)) * 1000
        + P.LIST
        + put(1)
        + P.POP
        + P.MARK
        + get(1) * 1000
        + P.LIST
        + put(2)
        + P.POP
        + P.MARK
        + get(2) * 1000
        + P.LIST
    )
    assert_refused(tmp_path, blob(body), match="budget")
    assert_refused(tmp_path, wrapped(body, ("train", "text")), match="budget")


def test_bytes_reused_for_many_arrays_is_refused(tmp_path):
    """One 1 MiB bytes object memoised and BUILT into 80 arrays: 80 MiB made during the load from
    a 1 MiB file, even though the arrays are then dropped (POP) and never reach the result."""
    raw = P.BINBYTES + struct.pack("<I", 1 << 20) + b"\0" * (1 << 20) + put(3)
    body = array((1 << 18,), dtype_("f4"), raw) + P.POP
    body += (array((1 << 18,), dtype_("f4"), get(3)) + P.POP) * 80 + P.NONE
    assert_refused(tmp_path, blob(body), match="budget")


def test_declared_lengths_beyond_the_file_are_refused(tmp_path):
    for op in (
        P.BINBYTES8 + struct.pack("<Q", 1 << 40),
        P.BINUNICODE8 + struct.pack("<Q", 1 << 40),
        P.BYTEARRAY8 + struct.pack("<Q", 1 << 40),
        P.BINBYTES + struct.pack("<I", 0xFFFFFFF0),
        P.FRAME + struct.pack("<Q", 1 << 40),
    ):
        assert_refused(tmp_path, blob(op), match="only")


def test_budget_allows_a_legit_file_up_to_its_floor(tmp_path):
    """Memo reuse under the budget (64 MiB floor) still loads: legit pickles share objects too."""
    x = np.arange(1 << 16, dtype=np.float32)  # 256 KiB
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({"a": [x] * 100}, protocol=4))  # 25 MiB reached
    out = safe_load_pickle(path)
    assert out["a"][0] is out["a"][99] and (out["a"][0] == x).all()
    assert 100 * x.nbytes < BUDGET_FLOOR


# -- attacks beyond code execution -----------------------------------------------------------------
def test_forged_dtype_flags_cannot_mark_bytes_as_object_pointers(tmp_path):
    """A float64 dtype BUILT with flags=0x3f claims to hold object pointers; the array's bytes
    (0x4141...) would be dereferenced as PyObject*. Only the byte order is taken from the file."""
    raw = struct.pack("<Q", 0x4141414141414141)
    path = tmp_path / "forged.pkl"
    path.write_bytes(blob(array((1,), dtype_("f8", flags=0x3F, copy=True), by(raw))))
    arr = safe_load_pickle(path)
    assert arr.dtype == np.float64 and not arr.dtype.hasobject and arr.tobytes() == raw


def test_build_cannot_change_numpys_own_dtype(tmp_path):
    """dtype('f8', align, copy=False) is numpy's process-wide float64; BUILD must not reach it."""
    path = tmp_path / "singleton.pkl"
    path.write_bytes(blob(array((1,), dtype_("f8", order=">"), by(b"\0" * 7 + b"\x01"))))
    arr = safe_load_pickle(path)
    assert (
        arr[0] == np.frombuffer(b"\0" * 7 + b"\x01", ">f8")[0]
    )  # read big-endian (numpy stores it native)
    assert np.dtype("f8").str == "<f8" and np.zeros(1).dtype.byteorder == "="


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    depth = 200_000
    body = P.EMPTY_LIST * depth + P.APPEND * (depth - 1)
    path = tmp_path / "deep.pkl"
    path.write_bytes(wrapped(body, ("train", "text")))
    with pytest.raises(DataError) as info:
        ingest("mmsa", path, tmp_path / "store")
    assert str(path) in str(info.value) and not (tmp_path / "store").exists()


def test_refusal_is_one_printable_line(tmp_path):
    """Names from the file are escaped: no newline or control characters reach the terminal."""
    err = assert_refused(tmp_path, blob(g("os\n\x1b[31m", "sys\ntem") + P.NONE))
    assert "\x1b" not in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x04",
        b"not a pickle",
        b"\x80\x04K\x01K\x02",
        b"\x80\x04h\x09.",
        b"\x80\x04L" + b"9" * 100_000 + b"\n.",
        b"\x80\x040.",
        b"\x80\x04(e.",
    ],
)
def test_malformed_pickles_are_data_errors(tmp_path, data):
    assert_refused(tmp_path, data, malformed=True)


# -- through the CLI -------------------------------------------------------------------------------
CLI_CASES = {
    "dotted-eval": lambda m: wrapped(_eval_via(g("numpy", "dtypes.__builtins__.get"))(m)),
    "ndarray-amplification": lambda m: wrapped(
        PAYLOADS["numpy.ndarray(shape)"](m), ("train", "text")
    ),
    "object-array": lambda m: wrapped(ARRAYS["object array via _reconstruct+BUILD"](m)),
    "inst-os-system": lambda m: wrapped(OPCODES["INST"](m)),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_ingest_refuses(tmp_path, case):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(CLI_CASES[case](marker))
    res = subprocess.run(
        [
            str(MSAFLOW),
            "data",
            "ingest",
            "--format",
            "mmsa",
            str(path),
            "--out",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.pkl" in lines[0] and "pickle" in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not marker.exists() and not (tmp_path / "store").exists()


# -- what must keep loading ------------------------------------------------------------------------
def _legit() -> dict:
    rng = np.random.default_rng(3)
    return {
        "f32": rng.standard_normal((4, 3, 2)).astype(np.float32),
        "f64": rng.standard_normal((2, 5)),
        "f16": np.ones(3, np.float16),
        "i64": np.arange(6).reshape(2, 3),
        "i32": np.arange(3, dtype=np.int32),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False]),
        "c64": np.ones(2, np.complex64),
        "U": np.array(["03bSnISJMiM$_$1", "ü"]),
        "S": np.array([b"ab", b"c"]),
        "big": np.arange(3, dtype=">f4"),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "view": np.arange(10.0)[::2],
        "empty": np.zeros((0, 3), np.float32),
        "0d": np.array(2.5),
        "scalars": [np.float32(1.5), np.int64(-2), np.bool_(True), np.str_("x"), np.float64(3.0)],
        "raw_text": ["an utterance", "another"],
        "nested": {"x": (1, 2.0, None, True), "y": b"\x00\xff"},
        "set": {1, 2},
        "frozenset": frozenset({"a"}),
        "bytearray": bytearray(b"\x00\x01"),
        "odict": collections.OrderedDict(a=1, b=[1]),
        "dtype": np.dtype("<U16"),
        "dtype_cls": type(np.dtype("f4")),
        "big_int": 2**100,
        "float": 1e300,
    }


def _same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert a.flags.writeable
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a == b
    else:
        assert a == b


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_real_numpy_pickles_load_identically(tmp_path, proto):
    data = _legit()
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=proto))
    _same(safe_load_pickle(path), pickle.loads(path.read_bytes()))


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_valid_dataset_still_ingests(tmp_path, proto):
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(dataset(), protocol=proto))
    m = ingest("mmsa", path, tmp_path / "store")
    assert m.splits == {"train": 6, "valid": 3, "test": 3}


def test_wrapper_itself_is_a_valid_dataset(tmp_path):
    """The battery's carrier: a harmless payload inside it ingests, so a refusal is the
    payload's."""
    path = tmp_path / "carrier.pkl"
    path.write_bytes(wrapped(array((1,), dtype_("f4"), by(b"\0" * 4))))
    assert ingest("mmsa", path, tmp_path / "store").splits["train"] == 6


def test_python2_style_array_bytes_load(tmp_path):
    """Python 2 numpy pickles carry array bytes as str (SHORT_BINSTRING); read as latin1, as numpy's
    own docs advise, they become the same array."""
    raw = np.arange(3, dtype="<f4").tobytes()
    body = (
        reconstruct(core="numpy.core.multiarray")
        + P.MARK
        + P.BININT1
        + b"\x01"
        + P.MARK
        + i(3)
        + P.TUPLE
        + dtype_("f4")
        + P.NEWFALSE
        + P.SHORT_BINSTRING
        + bytes([len(raw)])
        + raw
        + P.TUPLE
        + P.BUILD
    )
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob(body, proto=2))
    np.testing.assert_array_equal(safe_load_pickle(path), np.arange(3, dtype=np.float32))


@pytest.mark.real_data
def test_real_mmsa_file_still_loads():
    if not REAL_PKL.is_file():
        pytest.skip(f"{REAL_PKL} not present")
    data = safe_load_pickle(REAL_PKL)
    ref = pickle.loads(REAL_PKL.read_bytes())  # the file is trusted here; this is the reference
    _same(data, ref)
    assert {k: v["text"].shape for k, v in data.items()} == {
        "train": (1252, 1, 100),
        "valid": (195, 1, 100),
        "test": (752, 1, 100),
    }
