"""Ingest the two pickle formats real MSA features come in: MMSA processed and MulT-style.

Rules:
- Unpickling never runs code: a restricted unpickler admits exact (module, name) pairs only
  (numpy arrays rebuilt from their serialised bytes, numpy scalars and plain dtypes, containers,
  numbers, strings) and refuses anything else, naming the file. What a file may make is bounded
  by its size (see "The restricted unpickler" below).
- Non-finite feature values (real MOSEI COVAREP has -inf and NaN) are counted per split and
  modality and replaced according to ``nonfinite`` (``zero``, the field's practice, or ``error``).
  The counts go in the manifest's ``cleaning``.
- Lengths: unaligned MMSA files carry ``audio_lengths``/``vision_lengths`` and frames past a length
  are not always zero, so lengths are taken from those fields, never from zero-detection, and the
  frames past them are zeroed (counted). Aligned files have no lengths: the text length comes from
  ``text_bert``'s attention mask when present (all modalities share it), else the full T.
- Re-ingesting an unchanged source with the same config is a no-op.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import pickletools
import re
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.errors import DataError
from msaflow.feature_store.datatypes import (
    Manifest,
    SplitData,
    check_split,
    check_splits,
    read_manifest,
)
from msaflow.feature_store.parquet_io import file_sha256, write_dataset
from msaflow.modalities import MODALITIES

FORMATS = ("mmsa", "mult")
NONFINITE_POLICIES = ("zero", "error")

# --- The restricted unpickler --------------------------------------------------------------------
# Safe by construction: the stdlib's pure-Python unpickler (pickle._Unpickler), whose opcode table
# we can replace, with every opcode that is not in _OPCODES refused outright. ``find_class`` is a
# dict lookup of exact (module, name) pairs: nothing is imported and no attribute path is walked
# (STACK_GLOBAL would resolve "dtypes.__builtins__.get" to dict.get, then eval). REDUCE may call
# only the few callables in ``_calls`` and each checks its arguments; BUILD may only finish an
# array or a dtype this load created and has not finished yet. Everything a file makes is counted
# against a budget tied to its size, and so is the loaded result with every memo reuse counted
# again: data that is not serialised in the file cannot be declared (no uninitialised or
# repeated-by-reference gigabytes from a few hundred bytes).

try:  # numpy >= 1.26 (and 2.x) has numpy._core; older numpy only numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# Amplification budget: a file may make (and its result may reach) at most this many bytes.
BUDGET_FLOOR = 64 << 20
BUDGET_FACTOR = 4

# dtype strings numpy writes for plain numeric/text arrays: bool, ints, floats, complex, str (U),
# bytes (S). Not object (O: pointers), void/structured (V), datetime (M/m) or anything with fields.
_DTYPE_STR = re.compile(r"(b1|[iu][1248]|f(2|4|8|12|16)|c(8|16|24|32)|[US][0-9]{1,9})")
_DTYPE_KINDS = frozenset("biufcUS")

# Admitted values, by exact (module, name) as pickle writes them. Rationale, pair by pair:
# - builtins containers/scalar types: pickled as plain values (e.g. a dict of types); set,
#   frozenset, bytearray (of bytes) and bytes (no arguments) are also callable below, because
#   protocols 0-2 pickle them by REDUCE.
#   "__builtin__" is how Python 2 and protocol-2 pickles spell builtins. object, getattr, eval,
#   exec, __import__, open, slice, complex, copyreg.* are NOT here: they build arbitrary objects.
# - _codecs.encode: protocol 2 writes bytes as encode(str, "latin1"); callable with exactly that.
# - collections.OrderedDict: callable with no arguments (its items follow as SETITEMS).
# - numpy.dtype: callable as numpy pickles it, dtype(<simple dtype string>, bool, bool).
# - numpy.ndarray: a value only, the first argument of _reconstruct; never callable (that would
#   allocate any shape, uninitialised).
# - multiarray._reconstruct (numpy.core in 1.x, numpy._core in 2.x): callable only as
#   _reconstruct(ndarray, (0,), b"b"), an empty array that BUILD then fills from serialised bytes.
# - multiarray.scalar: a numpy scalar from its serialised bytes, never an object scalar.
# - numeric._frombuffer: protocol 5 arrays, from in-band serialised bytes only.
# - numpy.dtypes.<X>DType: the DType classes of the admitted kinds, as values, one by one
#   (numpy pickles them as "numpy.dtypes", "Float32DType"); never the Object/Void/String ones.
_BUILTIN_TYPES = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "str": str,
    "bytes": bytes,
    "bytearray": bytearray,
    "int": int,
    "float": float,
    "complex": complex,
    "bool": bool,
}
_DTYPE_CLASS_NAMES = (
    "BoolDType",
    "Int8DType",
    "Int16DType",
    "Int32DType",
    "Int64DType",
    "UInt8DType",
    "UInt16DType",
    "UInt32DType",
    "UInt64DType",
    "ByteDType",
    "ShortDType",
    "IntDType",
    "LongDType",
    "LongLongDType",
    "UByteDType",
    "UShortDType",
    "UIntDType",
    "ULongDType",
    "ULongLongDType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "LongDoubleDType",
    "Complex64DType",
    "Complex128DType",
    "CLongDoubleDType",
    "StrDType",
    "BytesDType",
)
_ADMITTED: dict[tuple[str, str], Any] = {
    **{(mod, n): t for mod in ("builtins", "__builtin__") for n, t in _BUILTIN_TYPES.items()},
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{
        (f"numpy.{core}.multiarray", n): getattr(_multiarray, n)
        for core in ("core", "_core")
        for n in ("_reconstruct", "scalar")
    },
    **{
        (f"numpy.{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in ("core", "_core")
    },
    **{
        ("numpy.dtypes", n): getattr(np.dtypes, n)
        for n in _DTYPE_CLASS_NAMES
        if hasattr(getattr(np, "dtypes", None), n)
    },
}

# Every opcode a real dict-of-numpy-arrays pickle (protocols 0-5) uses. Refused by omission: INST,
# OBJ, NEWOBJ, NEWOBJ_EX (build any class), EXT1/2/4 (copyreg's extension registry),
# PERSID/BINPERSID (persistent ids), NEXT_BUFFER/READONLY_BUFFER (out-of-band buffers).
_OPCODES = frozenset(
    op[0]
    for op in (
        pickle.PROTO,
        pickle.FRAME,
        pickle.STOP,
        pickle.MARK,
        pickle.POP,
        pickle.POP_MARK,
        pickle.DUP,
        pickle.NONE,
        pickle.NEWTRUE,
        pickle.NEWFALSE,
        pickle.INT,
        pickle.BININT,
        pickle.BININT1,
        pickle.BININT2,
        pickle.LONG,
        pickle.LONG1,
        pickle.LONG4,
        pickle.FLOAT,
        pickle.BINFLOAT,
        pickle.STRING,
        pickle.BINSTRING,
        pickle.SHORT_BINSTRING,
        pickle.BINBYTES,
        pickle.SHORT_BINBYTES,
        pickle.BINBYTES8,
        pickle.BYTEARRAY8,
        pickle.UNICODE,
        pickle.BINUNICODE,
        pickle.SHORT_BINUNICODE,
        pickle.BINUNICODE8,
        pickle.EMPTY_LIST,
        pickle.APPEND,
        pickle.APPENDS,
        pickle.LIST,
        pickle.EMPTY_TUPLE,
        pickle.TUPLE,
        pickle.TUPLE1,
        pickle.TUPLE2,
        pickle.TUPLE3,
        pickle.EMPTY_DICT,
        pickle.DICT,
        pickle.SETITEM,
        pickle.SETITEMS,
        pickle.EMPTY_SET,
        pickle.ADDITEMS,
        pickle.FROZENSET,
        pickle.GET,
        pickle.BINGET,
        pickle.LONG_BINGET,
        pickle.PUT,
        pickle.BINPUT,
        pickle.LONG_BINPUT,
        pickle.MEMOIZE,
        pickle.GLOBAL,
        pickle.STACK_GLOBAL,
        pickle.REDUCE,
        pickle.BUILD,
    )
)


class _Refused(Exception):
    """Raised inside the unpickler; becomes DataError(path, "pickle", ...)."""


def _show(s: object, limit: int = 80) -> str:
    """A name from the file, safe to print on one line."""
    text = s if isinstance(s, str) else repr(s)
    return text if text.isprintable() and len(text) <= limit else ascii(text[:limit])


class _BoundedFile:
    """Refuses any read longer than what is left of the file: a length field (BINBYTES8, FRAME, ...)
    cannot make the reader allocate more than the file holds."""

    def __init__(self, fh: Any, size: int):
        self._fh, self._left = fh, size

    def read(self, n: int) -> bytes:
        if n > self._left:
            raise _Refused(
                f"a length field declares {n} bytes, but only {self._left} are left in the file"
            )
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._fh.readline()
        self._left -= len(data)
        return data


def _shape(x: Any) -> tuple[int, ...]:
    if type(x) is not tuple or not all(type(n) is int and n >= 0 for n in x) or len(x) > 32:
        raise _Refused(f"an array shape of non-negative ints, got {_show(x)}")
    return x


def _plain_dtype(x: Any) -> np.dtype:
    if (
        not isinstance(x, np.dtype)
        or x.hasobject
        or x.kind not in _DTYPE_KINDS
        or x.fields is not None
        or x.subdtype is not None
    ):
        raise _Refused(f"a numeric, str or bytes dtype (no object arrays), got {_show(x)}")
    return x


def _check_text(dtype: np.dtype, raw: bytes | bytearray) -> None:
    """A str (U) array's bytes are UCS-4 code points; one past U+10FFFF makes numpy fail later with
    a SystemError when the value is read (found by fuzzing, issue 20), so it is refused here."""
    if dtype.kind == "U" and len(raw):
        points = np.frombuffer(raw, dtype=np.dtype("u4").newbyteorder(dtype.byteorder))
        if int(points.max()) > 0x10FFFF:
            raise _Refused("str arrays of valid Unicode code points (<= U+10FFFF)")


def _raw(x: Any) -> bytes | bytearray:
    if isinstance(x, str):  # Python 2 pickles loaded with encoding="latin1", as numpy does
        x = x.encode("latin1")
    if type(x) not in (bytes, bytearray):
        raise _Refused(f"serialised array bytes, got {type(x).__name__}")
    return x


class _SafeUnpickler(pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh: Any, size: int):
        super().__init__(_BoundedFile(fh, size), encoding="latin1")
        self.budget = max(BUDGET_FLOOR, BUDGET_FACTOR * size)
        self.made = 0  # bytes made by calls and BUILDs so far
        self.pending: dict[int, tuple[str, Any, Any]] = {}  # id -> (kind, obj, dtype string)
        self._calls = {
            id(_multiarray._reconstruct): self._reconstruct,
            id(np.dtype): self._dtype,
            id(_multiarray.scalar): self._scalar,
            id(_numeric._frombuffer): self._frombuffer,
            id(codecs.encode): self._encode,
            id(OrderedDict): self._odict,
            id(set): lambda *a: self._set(set, *a),
            id(frozenset): lambda *a: self._set(frozenset, *a),
            id(bytearray): self._bytearray,
            id(bytes): self._bytes,
        }
        self._names = {id(v): f"{m}.{n}" for (m, n), v in reversed(_ADMITTED.items())}

    def _spend(self, n: int) -> None:
        self.made += n
        if self.made > self.budget:
            raise _Refused(
                f"at most {self.budget} bytes of data (budget for the file's size); it makes more"
            )

    # -- globals and opcodes --
    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise _Refused(f"plain global names; refused dotted name {_show(module)}.{_show(name)}")
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise _Refused(
                "only numpy arrays, numbers, strings and containers; "
                f"refused class {_show(module)}.{_show(name)}"
            ) from None

    def _refuse_opcode(self, code: int) -> None:
        name = next(
            (op.name for op in pickletools.opcodes if op.code == chr(code)), f"0x{code:02x}"
        )
        raise _Refused(f"plain data opcodes; refused opcode {name}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        call = self._calls.get(id(func))
        if call is None:
            raise _Refused(
                f"only numpy's array and dtype constructors called; refused calling "
                f"{self._names.get(id(func)) or type(func).__name__}"
            )
        if type(args) is not tuple:
            raise _Refused("a tuple of call arguments")
        self.stack[-1] = call(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        kind, obj, dstr = self.pending.pop(id(inst), (None, None, None))
        if obj is not inst:
            raise _Refused(
                f"state only for an array or dtype being built; refused BUILD on "
                f"{type(inst).__name__}"
            )
        (self._build_array if kind == "array" else self._build_dtype)(inst, state, dstr)

    def load_append(self) -> None:
        if type(self.stack[-2]) is not list:
            raise _Refused("APPEND only to a list")
        super().load_append()

    def load_appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise _Refused("APPENDS only to a list")
        self.stack[-1].extend(items)

    def load_setitem(self) -> None:
        if type(self.stack[-3]) not in (dict, OrderedDict):
            raise _Refused("SETITEM only on a dict")
        super().load_setitem()

    def load_setitems(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) not in (dict, OrderedDict) or len(items) % 2:
            raise _Refused("SETITEMS only on a dict, in key/value pairs")
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            raise _Refused("ADDITEMS only to a set")
        self.stack[-1].update(items)

    # -- the admitted calls, each checking its arguments --
    def _reconstruct(
        self, cls: Any = None, shape: Any = None, order: Any = None, *extra: Any
    ) -> np.ndarray:
        if (
            cls is not np.ndarray
            or type(shape) is not tuple
            or shape != (0,)
            or order not in (b"b", "b")
            or extra
        ):
            raise _Refused(
                f"_reconstruct(numpy.ndarray, (0,), b'b') as numpy writes it, got class "
                f"{self._names.get(id(cls)) or type(cls).__name__}, shape {_show(shape)}"
            )
        arr = _multiarray._reconstruct(np.ndarray, (0,), b"b")
        self.pending[id(arr)] = ("array", arr, None)
        return arr

    def _build_array(self, arr: np.ndarray, state: Any, _: Any) -> None:
        if (
            type(state) is not tuple
            or len(state) != 5
            or state[0] != 1
            or type(state[3]) is not bool
        ):
            raise _Refused("array state (1, shape, dtype, is_fortran, bytes)")
        shape, dtype, raw = _shape(state[1]), _plain_dtype(state[2]), _raw(state[4])
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != len(raw):
            raise _Refused(
                f"array bytes matching shape {shape} x {dtype.itemsize}; got {len(raw)} bytes"
            )
        self._spend(nbytes)
        _check_text(dtype, raw)
        arr.__setstate__((1, shape, dtype, state[3], raw))

    def _dtype(
        self, spec: Any = None, align: Any = False, copy: Any = True, *extra: Any
    ) -> np.dtype:
        if (
            type(spec) is not str
            or not _DTYPE_STR.fullmatch(spec)
            or type(align) is not bool
            or type(copy) is not bool
            or extra
        ):
            raise _Refused(
                f"a numeric, str or bytes dtype (no object arrays), got dtype({_show(spec)})"
            )
        dt = np.dtype(spec, align, True)  # always a fresh copy: BUILD must never touch numpy's own
        self.pending[id(dt)] = ("dtype", dt, spec)
        return dt

    def _build_dtype(self, dt: np.dtype, state: Any, spec: str) -> None:
        if (
            type(state) is not tuple
            or len(state) not in (8, 9)
            or state[0] not in (3, 4)
            or state[1] not in ("<", ">", "|", "=")
            or any(s is not None for s in state[2:5])
            or (len(state) == 9 and state[8] is not None)
        ):
            raise _Refused(f"a plain dtype state (no fields or subarrays), got {_show(state)}")
        # Only the byte order is taken from the file; size, alignment and flags are numpy's own for
        # this dtype string (a forged flags field could mark plain bytes as object pointers).
        canon = np.dtype(spec)
        if state[1] in "<>" and canon.byteorder != "|":
            canon = canon.newbyteorder(state[1])
        dt.__setstate__(canon.__reduce__()[2])
        if dt != canon or dt.flags != canon.flags or dt.itemsize != canon.itemsize:
            raise _Refused(f"a plain dtype, got {_show(dt)}")

    def _scalar(self, dtype: Any = None, data: Any = None, *extra: Any) -> Any:
        dtype, data = _plain_dtype(dtype), _raw(data)
        if len(data) != dtype.itemsize or extra:
            raise _Refused(f"numpy scalar bytes of size {dtype.itemsize}")
        self._spend(len(data))
        _check_text(dtype, data)
        return _multiarray.scalar(dtype, data)

    def _frombuffer(
        self, buf: Any = None, dtype: Any = None, shape: Any = None, order: Any = "C", *extra: Any
    ) -> np.ndarray:
        buf, dtype, shape = _raw(buf), _plain_dtype(dtype), _shape(shape)
        if math.prod(shape) * dtype.itemsize != len(buf) or order not in ("C", "F") or extra:
            raise _Refused(
                f"array bytes matching shape {shape} x {dtype.itemsize}; got {len(buf)} bytes"
            )
        self._spend(len(buf))
        _check_text(dtype, buf)
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)
        return arr if arr.flags.writeable else arr.copy()

    def _encode(self, text: Any = None, encoding: Any = None, *extra: Any) -> bytes:
        if type(text) is not str or encoding != "latin1" or extra:
            raise _Refused("_codecs.encode(str, 'latin1') as protocol 2 writes bytes")
        self._spend(len(text))
        return codecs.encode(text, "latin1")

    def _odict(self, *args: Any) -> OrderedDict:
        if args:
            raise _Refused("OrderedDict() with no arguments")
        return OrderedDict()

    def _set(self, cls: type, *args: Any) -> set | frozenset:
        if len(args) > 1 or (args and type(args[0]) not in (list, tuple)):
            raise _Refused(f"{cls.__name__}() of a list")
        self._spend(8 * len(args[0]) if args else 0)
        return cls(*args)

    def _bytes(self, *args: Any) -> bytes:
        if args:  # protocol < 3 writes only the empty bytes as bytes(); the rest via _codecs.encode
            raise _Refused("bytes() with no arguments")
        return b""

    def load_bytearray8(self) -> None:  # the stdlib's allocates the declared length before reading
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))

    def _bytearray(self, *args: Any) -> bytearray:
        if args == () or (len(args) == 1 and type(args[0]) is bytes):
            data = args[0] if args else b""
        elif len(args) == 2 and type(args[0]) is str and args[1] == "latin-1":  # protocol 2
            data = args[0].encode("latin-1")
        else:
            raise _Refused("bytearray(bytes) as pickle writes it")
        self._spend(len(data))
        return bytearray(data)


for _code in range(256):
    if _code not in _OPCODES:
        _SafeUnpickler.dispatch[_code] = lambda self, _c=_code: self._refuse_opcode(_c)
for _op, _fn in (
    (pickle.REDUCE, _SafeUnpickler.load_reduce),
    (pickle.BUILD, _SafeUnpickler.load_build),
    (pickle.APPEND, _SafeUnpickler.load_append),
    (pickle.APPENDS, _SafeUnpickler.load_appends),
    (pickle.SETITEM, _SafeUnpickler.load_setitem),
    (pickle.SETITEMS, _SafeUnpickler.load_setitems),
    (pickle.ADDITEMS, _SafeUnpickler.load_additems),
    (pickle.BYTEARRAY8, _SafeUnpickler.load_bytearray8),
):
    _SafeUnpickler.dispatch[_op[0]] = _fn


def _reached_bytes(root: Any, limit: int) -> int:
    """Bytes the loaded result reaches, counting a memo-shared object once per reference (as a
    consumer copying it out would); stops as soon as ``limit`` is passed. Refuses cycles."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    todo: list[tuple[Any, bool]] = [(root, False)]
    while todo:
        obj, done = todo.pop()
        oid = id(obj)
        kids: Any = ()
        if isinstance(obj, dict):
            kids = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            kids = obj
        if done:
            sizes[oid] = 8 * len(kids) + sum(sizes[id(k)] for k in kids)
            on_path.discard(oid)
        elif oid in sizes:
            continue
        elif oid in on_path:
            raise _Refused("data without reference cycles")
        elif kids:
            on_path.add(oid)
            todo.append((obj, True))
            todo.extend((k, False) for k in kids)
            continue
        else:
            sizes[oid] = (
                obj.nbytes
                if isinstance(obj, np.ndarray)
                else len(obj)
                if isinstance(obj, (str, bytes, bytearray))
                else 0
            )
        if sizes[oid] > limit:
            raise _Refused(
                f"at most {limit} bytes of data (budget for the file's size); its result "
                f"reaches more (memo references counted each time)"
            )
    return sizes[id(root)]


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle of numpy arrays and plain containers; nothing in it can run code.

    Refuses, naming the file: any global outside the exact allowlist, any call other than numpy's
    array/dtype reconstruction, object arrays, and data beyond max(64 MiB, 4 x file size)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            unpickler = _SafeUnpickler(io.BufferedReader(fh, 1 << 20), size)
            data = unpickler.load()
        _reached_bytes(data, unpickler.budget)
        return data
    except _Refused as exc:
        raise DataError(path, "pickle", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file raises is a data error
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(path, "pickle", f"a complete, uncorrupted pickle ({msg})") from None


def _array(path: Path, obj: Any, field: str, rank: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is a data error
        raise DataError(path, field, f"an array ({exc})") from None
    if rank is not None and arr.ndim != rank:
        raise DataError(path, field, f"a rank-{rank} array, got shape {arr.shape}")
    return arr


def _numbers(path: Path, obj: Any, field: str, rank: int | None = None) -> np.ndarray:
    """An array of numbers (bool, int, float): not strings, bytes, objects or records."""
    arr = _array(path, obj, field, rank)
    if arr.dtype.kind not in "biuf":
        raise DataError(path, field, f"an array of numbers, got dtype {_show(str(arr.dtype))}")
    return arr


def _counts(path: Path, obj: Any, field: str, n: int) -> np.ndarray:
    """N non-negative whole numbers (lengths, attention-mask sums)."""
    x = _numbers(path, obj, field).reshape(-1).astype(np.float64)
    if len(x) != n or not np.isfinite(x).all() or (x < 0).any() or (x != np.round(x)).any():
        raise DataError(path, field, f"N={n} non-negative whole numbers")
    return np.minimum(x, np.iinfo(np.int64).max // 2).astype(np.int64)


def _floats(path: Path, x: np.ndarray, field: str) -> np.ndarray:
    try:
        return x.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(path, field, f"numbers ({_show(str(exc))})") from None


def default_name(path: str | Path) -> str:
    """A store name from the source: ``MOSI/aligned_50.pkl`` -> ``mosi-aligned_50`` (MMSA names its
    files alike across datasets, so the folder tells them apart)."""
    p = Path(path).resolve()
    return f"{p.parent.name.lower()}-{p.stem}" if p.parent.name else p.stem


def _clean(path: Path, split: str, m: str, x: np.ndarray, policy: str, counts: dict) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float32)  # float64 sources halve here
    except (TypeError, ValueError) as exc:
        raise DataError(path, f"{split}.{m}", f"numeric features ({_show(str(exc))})") from None
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    counts.setdefault("nonfinite", {}).setdefault(split, {})[m] = n_bad
    if n_bad:
        if policy == "error":
            raise DataError(
                path, f"{split}.{m}", f"finite features; found {n_bad} NaN/inf (use nonfinite=zero)"
            )
        x = np.where(bad, np.float32(0), x)
    return x


def _split_ids(path: Path, ids: Any, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = _array(path, ids, field)
    if (
        ids.ndim not in (1, 2)
        or (ids.ndim == 2 and ids.shape[1] == 0)
        or ids.dtype.kind not in "USiu"
    ):
        raise DataError(
            path,
            field,
            f"ids as a rank-1 array (or MulT rows of [video, clip, ...]) of "
            f"strings or integers, got shape {ids.shape} dtype {_show(str(ids.dtype))}",
        )
    if ids.dtype.kind == "S":  # numpy decodes bytes as ASCII
        try:
            ids = ids.astype(str)
        except UnicodeDecodeError:
            raise DataError(path, field, "ids of ASCII bytes or strings") from None
    if ids.ndim == 2:  # MulT: rows like [video, clip start, clip end] or [video, clip]
        video = ids[:, 0].astype(str)
        clip = ids[:, 1].astype(str) if ids.shape[1] > 1 else np.arange(len(ids)).astype(str)
        return np.array([f"{v}$_${c}" for v, c in zip(video, clip, strict=True)]), video, clip
    full = ids.astype(str)
    parts = [s.rsplit("$_$", 1) if "$_$" in s else s.rsplit("_", 1) for s in full]
    video = np.array([p[0] for p in parts])
    clip = np.array([p[1] if len(p) > 1 else "" for p in parts])
    return full, video, clip


def _mmsa_split(path: Path, name: str, d: dict, policy: str, counts: dict) -> SplitData:
    if not isinstance(d, dict):
        raise DataError(path, name, f"a dict of arrays, got {type(d).__name__}")
    for key in ("text", "audio", "vision", "regression_labels", "id"):
        if key not in d:
            raise DataError(
                path,
                f"{name}.{key}",
                "an MMSA split field (text, audio, vision, regression_labels, id)",
            )
    feats = {
        m: _clean(path, name, m, _numbers(path, d[m], f"{name}.{m}", 3), policy, counts)
        for m in MODALITIES
    }
    n = len(feats["text"])
    for m, x in feats.items():
        if len(x) != n:
            raise DataError(path, f"{name}.{m}", f"N={n} rows like text, got {len(x)}")
    labels = _floats(
        path,
        _numbers(path, d["regression_labels"], f"{name}.regression_labels").reshape(-1),
        f"{name}.regression_labels",
    )
    if len(labels) != n:
        raise DataError(path, f"{name}.regression_labels", f"N={n} labels, got {len(labels)}")
    t_text = feats["text"].shape[1]
    if "text_bert" in d:
        tb = _numbers(path, d["text_bert"], f"{name}.text_bert", 3)
        if tb.shape[0] != n or tb.shape[1] < 2:
            raise DataError(
                path,
                f"{name}.text_bert",
                f"shape (N={n}, 3, T): ids, attention mask, segments; got {tb.shape}",
            )
        text_len = _counts(path, tb[:, 1, :].astype(np.float64).sum(1), f"{name}.text_bert", n)
    else:
        text_len = np.full(n, t_text, np.int64)
    lengths = {"text": np.minimum(text_len, t_text)}
    zeroed = 0
    for m in ("audio", "vision"):
        key = f"{m}_lengths"
        t_m = feats[m].shape[1]
        if key in d:
            ln = np.minimum(_counts(path, d[key], f"{name}.{key}", n), t_m)
            past = np.arange(t_m)[None, :] >= ln[:, None]
            zeroed += int((feats[m][past] != 0).any(-1).sum())
            feats[m][past] = 0.0
        else:  # aligned: every modality shares the text's word positions
            ln = lengths["text"].copy() if t_m == t_text else np.full(n, t_m, np.int64)
        lengths[m] = ln
    counts.setdefault("frames_zeroed_past_length", {})[name] = zeroed
    full, video, clip = _split_ids(path, d["id"], f"{name}.id")
    texts = None
    if "raw_text" in d:
        texts = _array(path, d["raw_text"], f"{name}.raw_text", 1)
        if len(texts) != n or texts.dtype.kind != "U":
            raise DataError(path, f"{name}.raw_text", f"N={n} strings")
        texts = texts.astype(str)
    return SplitData(
        ids=full,
        labels=labels,
        features=feats,
        lengths=lengths,
        video_ids=video,
        clip_ids=clip,
        texts=texts,
    )


def _mult_split(
    path: Path, name: str, d: dict, policy: str, counts: dict, emotion: bool = False
) -> SplitData:
    if not isinstance(d, dict):
        raise DataError(path, name, f"a dict of arrays, got {type(d).__name__}")
    for key in ("text", "audio", "vision", "labels"):
        if key not in d:
            raise DataError(
                path, f"{name}.{key}", "a MulT split field (text, audio, vision, labels, id)"
            )
    feats = {
        m: _clean(path, name, m, _numbers(path, d[m], f"{name}.{m}", 3), policy, counts)
        for m in MODALITIES
    }
    n = len(feats["text"])
    for m, x in feats.items():
        if len(x) != n:
            raise DataError(path, f"{name}.{m}", f"N={n} rows like text, got {len(x)}")
    labels = _numbers(path, d["labels"], f"{name}.labels")
    class_labels = None
    if emotion:  # IEMOCAP (N, 4, 2) -> class ids; see mult_emotion_classes
        class_labels = mult_emotion_classes(path, f"{name}.labels", labels, n)
        labels = class_labels.astype(np.float32)
    elif labels.size != n:
        raise DataError(
            path,
            f"{name}.labels",
            f"one sentiment score per row, shape (N, 1, 1); got {labels.shape}",
        )
    ids = d.get("id", np.array([f"{name}{i}" for i in range(n)]))
    full, video, clip = _split_ids(path, ids, f"{name}.id")
    if len(full) != n:
        raise DataError(path, f"{name}.id", f"N={n} ids, got {len(full)}")
    return SplitData(
        ids=full,
        labels=_floats(path, labels.reshape(-1), f"{name}.labels"),
        features=feats,
        lengths={m: np.full(n, feats[m].shape[1], np.int64) for m in MODALITIES},
        video_ids=video,
        clip_ids=clip,
        class_labels=class_labels,
    )


# --- MulT's IEMOCAP labels (ingest --task emotion) ------------------------------------------------
# MulT's iemocap_data.pkl: labels (N, 4, 2), one [not-emotion, emotion] pair per emotion in this
# order (MulT's eval_iemocap). The 4-class setting has exactly one positive emotion per row; a row
# with none or several has no single class, so ingest refuses (counting them) rather than guess.
MULT_IEMOCAP_CLASSES = ["neutral", "happy", "sad", "angry"]  # = feature_store.sim.IEMOCAP_CLASSES
KIND_LABEL_RANGES = {"sentiment": (-3.0, 3.0), "emotion": (0.0, 3.0), "depression": (0.0, 27.0)}


def mult_emotion_classes(path: Path, field: str, labels: np.ndarray, n: int) -> np.ndarray:
    """(N, 4, 2) pairs -> (N,) int64 class ids: the one emotion whose positive logit wins its
    pair."""
    k = len(MULT_IEMOCAP_CLASSES)
    if labels.shape != (n, k, 2):
        raise DataError(
            path,
            field,
            f"MulT's IEMOCAP labels, shape (N={n}, {k}, 2): one [not-emotion, emotion] "
            f"pair per emotion ({', '.join(MULT_IEMOCAP_CLASSES)}); got {labels.shape}",
        )
    labels = _floats(path, labels, field)
    if not np.isfinite(labels).all():
        raise DataError(
            path, field, f"finite labels; {int((~np.isfinite(labels)).sum())} are NaN/inf"
        )
    positive = labels[:, :, 1] > labels[:, :, 0]  # (N, 4)
    per_row = positive.sum(axis=1)
    if (per_row != 1).any():
        raise DataError(
            path,
            field,
            f"exactly one positive emotion per row (the 4-class setting); "
            f"{int((per_row == 0).sum())} of {n} rows have none and {int((per_row > 1).sum())} "
            f"have several",
        )
    return positive.argmax(axis=1).astype(np.int64)


def ingest(
    fmt: str,
    path: str | Path,
    out_dir: str | Path,
    nonfinite: str = "zero",
    label_range: tuple[float, float] | None = None,
    name: str | None = None,
    force: bool = False,
    data_kind: str = "sentiment",
) -> Manifest:
    """Ingest an MMSA or MulT pickle into a store at ``out_dir`` (a no-op when unchanged).

    ``data_kind`` (the manifest's ``task``): sentiment (regression, default range [-3, 3]),
    depression (regression, [0, 27]) or emotion (MulT's IEMOCAP layout only: labels (N, 4, 2) -> 4
    classes, ``mult_emotion_classes``).

    ``out_dir`` may be new, empty or a store msaflow wrote; any other folder is refused unless
    ``force`` (then the store's files go in beside the user's, never over them).
    """
    src, out = Path(path), Path(out_dir)
    if fmt not in FORMATS:
        raise DataError(src, "format", f"one of {FORMATS}, got {fmt!r}")
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(src, "nonfinite", f"one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    if not src.is_file():
        raise DataError(src, "path", "an existing pickle file")
    if data_kind not in KIND_LABEL_RANGES:
        raise DataError(src, "task", f"one of {', '.join(KIND_LABEL_RANGES)}, got {data_kind!r}")
    if data_kind == "emotion" and fmt != "mult":
        raise DataError(
            src,
            "task",
            "emotion only with --format mult (MulT's IEMOCAP labels, N x 4 x 2); "
            "MMSA pickles hold sentiment scores",
        )
    emotion = data_kind == "emotion"
    label_range = (
        KIND_LABEL_RANGES[data_kind] if emotion or label_range is None else tuple(label_range)
    )
    sha = file_sha256(src)
    config = {"ingest": fmt, "version": 1, "nonfinite": nonfinite, "label_range": list(label_range)}
    if data_kind != "sentiment":  # sentiment stores keep their config (re-ingest stays a no-op)
        config["task"] = data_kind
    if (out / "manifest.json").is_file():
        try:
            existing = read_manifest(out)
            if existing.source_sha256 == sha and existing.config == config:
                return existing
        except DataError:
            pass
    data = safe_load_pickle(src)
    if not isinstance(data, dict):
        raise DataError(
            src, "top level", f"a dict with train/valid/test, got {type(data).__name__}"
        )
    keys = {"valid": ("valid", "dev", "val")}
    splits_raw = {}
    for split in ("train", "valid", "test"):
        found = next((k for k in keys.get(split, (split,)) if k in data), None)
        if found is None:
            raise DataError(
                src, split, f"a {split!r} split (top-level keys {sorted(map(str, data))})"
            )
        splits_raw[split] = data[found]
    counts: dict[str, Any] = {}
    reader = _mmsa_split if fmt == "mmsa" else _mult_split
    extra = {"emotion": True} if emotion else {}
    splits = {s: reader(src, s, d, nonfinite, counts, **extra) for s, d in splits_raw.items()}
    shapes = {m: {s.features[m].shape[1:] for s in splits.values()} for m in MODALITIES}
    for m, sh in shapes.items():
        if len(sh) != 1:
            raise DataError(src, m, f"one (T, d) shape across splits, got {sorted(sh)}")
    for split, d in splits.items():  # errors name the source file, not the store
        check_split(
            split,
            d,
            src,
            "classification" if emotion else "regression",
            label_range,
            len(MULT_IEMOCAP_CLASSES) if emotion else 1,
        )
    check_splits(splits, src)  # duplicate ids and train/test leakage, named against the source
    counts["nonfinite_policy"] = nonfinite
    return write_dataset(
        out,
        splits,
        name=name or default_name(src),
        source=f"{fmt}:{src.name}",
        data_kind=data_kind,
        label_kind="classification" if emotion else "regression",
        label_range=label_range,
        source_sha256=sha,
        config=config,
        cleaning=counts,
        force=force,
        num_classes=len(MULT_IEMOCAP_CLASSES) if emotion else 1,
        class_names=MULT_IEMOCAP_CLASSES if emotion else None,
    )
