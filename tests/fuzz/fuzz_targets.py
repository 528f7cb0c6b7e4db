"""The readers under fuzz: for each, valid seed inputs, structure-aware mutations, the public entry
point, the errors that count as clean, and (where there is one) the CLI command.

An input (a "case") is ``{file name: bytes}``, written into a fresh directory before the entry point
runs. A case holding ``.fixup`` has its store manifest's checksums recomputed after writing, so a
mutated Parquet file gets past the checksum check into the decoder (and the corpus replays it so).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fuzz_engine as fe
import numpy as np

Case = dict[str, bytes]


@dataclass
class Target:
    name: str
    seeds: Callable[[], list[Case]]
    mutate: Callable[[Case, random.Random, list[Case]], Case]
    run: Callable[[Path, Path], Any]  # (input dir, scratch dir for outputs)
    clean: Callable[[], tuple[type[BaseException], ...]]
    owner: str  # who owns the reader's code (findings elsewhere are reported, not fixed)
    cli: Callable[[Path, Path], list[str]] | None = None  # msaflow argv for the CLI oracle
    files: tuple[str, ...] = field(default=())


def _data_errors() -> tuple[type[BaseException], ...]:
    from msaflow.feature_store.schema import DataError

    return (DataError,)


def _config_errors() -> tuple[type[BaseException], ...]:
    from msaflow.feature_store.schema import DataError
    from msaflow.tasks.config import ConfigError

    return (ConfigError, DataError)


def _one(case_dir: Path, suffix: str) -> Path:
    found = sorted(p for p in case_dir.iterdir() if p.name.endswith(suffix))
    return found[0] if found else case_dir / f"missing{suffix}"


# --- 1. MMSA / MulT pickles -----------------------------------------------------------------------
def _mmsa_split(rng: random.Random, n: int, name: str, aligned: bool) -> dict:
    t, d = 3, 2
    d_ = {
        "text": rng_floats(rng, (n, t, d)),
        "audio": rng_floats(rng, (n, t, d)),
        "vision": rng_floats(rng, (n, t + (0 if aligned else 1), d)),
        "regression_labels": np.linspace(-2, 2, n).astype(np.float32),
        "id": np.array([f"{name}v{i}$_${i}" for i in range(n)]),
        "raw_text": np.array([f"w{i}" for i in range(n)]),
    }
    if not aligned:
        d_["audio_lengths"] = np.full(n, t, np.int64)
        d_["vision_lengths"] = np.full(n, t, np.int64)
        d_["text_bert"] = np.ones((n, 3, t), np.float32)
    return d_


def rng_floats(rng: random.Random, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(rng.randrange(1 << 30)).standard_normal(shape).astype(np.float32)


def _mult_dict(rng: random.Random) -> dict:
    out = {}
    for s in ("train", "valid", "test"):
        n = 3
        out[s] = {
            "text": rng_floats(rng, (n, 2, 2)),
            "audio": rng_floats(rng, (n, 2, 2)),
            "vision": rng_floats(rng, (n, 2, 2)),
            "labels": np.zeros((n, 1, 1), np.float32),
            "id": np.array([[f"{s}{i}", str(i), str(i + 1)] for i in range(n)]),
        }
    return out


def _mmsa_dict(rng: random.Random, aligned: bool = True) -> dict:
    return {s: _mmsa_split(rng, 3, s, aligned) for s in ("train", "valid", "test")}


def _pickle_seeds() -> list[Case]:
    import pickle

    rng = random.Random(0)
    seeds = []
    for proto in (2, 4, 5):
        seeds.append({"mmsa.pkl": pickle.dumps(_mmsa_dict(rng, True), protocol=proto)})
    seeds.append({"mmsa.pkl": pickle.dumps(_mmsa_dict(rng, False), protocol=4)})
    seeds.append({"mult.pkl": pickle.dumps(_mult_dict(rng), protocol=4)})
    return seeds


_DTYPES = (
    np.float64,
    np.float16,
    np.int32,
    np.int8,
    np.bool_,
    np.complex64,
    np.uint64,
    "<U3",
    "S2",
    ">f4",
)


def _tweak_array(a: Any, rng: random.Random) -> Any:
    a = np.asarray(a)
    r = rng.random()
    if r < 0.2:
        return (
            a.astype(rng.choice(_DTYPES))
            if a.dtype.kind in "fiub"
            else a.astype(np.float32, copy=False)
            if a.dtype.kind != "U"
            else np.arange(len(a))
        )
    if r < 0.35:  # change the shape: rank, rows, steps, dims
        shapes = [
            a.shape[:1],
            (*a.shape, 1),
            a.shape[1:],
            (0, *a.shape[1:]),
            (a.shape[0] + 1, *a.shape[1:]) if a.ndim else (2,),
            (*a.shape[:-1], 0) if a.ndim else (0,),
            (a.shape[0], 1, *a.shape[2:]) if a.ndim > 1 else (1,),
        ]
        shape = rng.choice(shapes)
        size = int(np.prod(shape))
        base = (
            np.resize(a.reshape(-1) if a.size else np.zeros(1, a.dtype), size)
            if size
            else np.zeros(0, a.dtype)
        )
        return base.reshape(shape)
    if r < 0.5 and a.dtype.kind == "f" and a.size:
        b = a.copy()
        b.reshape(-1)[rng.randrange(b.size)] = rng.choice((np.nan, np.inf, -np.inf, 3e38, -1e20))
        return b
    if r < 0.6 and a.dtype.kind in "US" and a.size > 1:  # duplicate ids
        b = a.copy()
        b.reshape(-1)[1] = b.reshape(-1)[0]
        return b
    if r < 0.7 and a.dtype.kind in "iu" and a.size:
        b = a.astype(np.int64).copy()
        b.reshape(-1)[rng.randrange(b.size)] = rng.choice((-1, 10**6, -(2**62), 2**62))
        return b
    if r < 0.78:
        return a.tolist()
    if r < 0.84:
        return rng.choice((None, "x", 3, 2.5, {}, [], b"\x00", np.float32(1), (1, 2)))
    if r < 0.9 and a.dtype.kind in "fiu":
        return a.astype(object)
    if r < 0.95:
        return np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    return a[::-1] if a.ndim else a


def _structural_pickle(rng: random.Random) -> Case:
    import pickle

    mult = rng.random() < 0.25
    data: Any = _mult_dict(rng) if mult else _mmsa_dict(rng, rng.random() < 0.5)
    for _ in range(rng.choice((1, 1, 2, 3))):
        r = rng.random()
        split = rng.choice(list(data))
        if r < 0.6:
            key = rng.choice(list(data[split]))
            data[split][key] = _tweak_array(data[split][key], rng)
        elif r < 0.68:
            data[split].pop(rng.choice(list(data[split])))
        elif r < 0.74:  # the same ids in two splits (leakage)
            other = rng.choice([s for s in data if s != split])
            data[other]["id"] = data[split]["id"]
        elif r < 0.8:  # memo reuse: one array object shared across splits and keys
            shared = data[split]["text"]
            for s in data:
                for k in ("text", "audio", "vision"):
                    data[s][k] = shared
        elif r < 0.85:
            data = {
                ({"valid": rng.choice(("dev", "val", "x"))}.get(k, k)): v for k, v in data.items()
            }
        elif r < 0.9:
            data[split] = rng.choice(([], None, "x", list(data[split].values())))
        elif r < 0.94:
            data = rng.choice(([data], list(data.values()), None, 3, "x"))
            break
        else:
            data[rng.choice(("extra", 1, None, ("t",)))] = data[split]
    return {
        ("mult.pkl" if mult else "mmsa.pkl"): pickle.dumps(
            data, protocol=rng.choice((0, 1, 2, 3, 4, 5))
        )
    }


def _mutate_pickle(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    if rng.random() < 0.35:
        return _structural_pickle(rng)
    ((name, data),) = case.items()
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if rng.random() < 0.55:
            data = rng.choice(fe.PICKLE_MUTATIONS)(data, rng)
        else:
            data = fe.mutate_bytes(data, rng, [v for s in seeds for v in s.values()])
    return {name: data}


def _run_pickle(case_dir: Path, work: Path) -> Any:
    from msaflow.feature_store.ingest import ingest

    src = _one(case_dir, ".pkl")
    fmt = "mult" if src.name.startswith("mult") else "mmsa"
    return ingest(fmt, src, work / "store")


def _cli_pickle(case_dir: Path, work: Path) -> list[str]:
    src = _one(case_dir, ".pkl")
    fmt = "mult" if src.name.startswith("mult") else "mmsa"
    return ["data", "ingest", str(src), "--out", str(work / "store"), "--format", fmt]


# --- 2. Feature stores: manifest JSON and Parquet -------------------------------------------------
@cache
def _store_seed_bytes(classification: bool) -> tuple[tuple[str, bytes], ...]:
    import tempfile

    from msaflow.feature_store.schema import SplitData, write_dataset

    rng = np.random.default_rng(0)
    splits = {}
    for s in ("train", "valid", "test"):
        n = 3
        splits[s] = SplitData(
            ids=np.array([f"{s}{i}" for i in range(n)]),
            labels=np.linspace(-1, 1, n).astype(np.float32),
            features={
                "text": rng.standard_normal((n, 2, 2)).astype(np.float32),
                "audio": rng.standard_normal((n, 2, 1)).astype(np.float32),
            },
            lengths={"text": np.array([2, 1, 2]), "audio": np.array([2, 2, 0])},
            class_labels=np.array([0, 1, 1]) if classification else None,
            texts=np.array(["a", "b", "c"]),
            subjects=np.array(["p1", "p2", "p1"]) if classification else None,
        )
    with tempfile.TemporaryDirectory() as tmp:
        kind = "classification" if classification else "regression"
        write_dataset(
            Path(tmp) / "s",
            splits,
            name="fuzz",
            source="fuzz",
            label_kind=kind,
            data_kind="emotion" if classification else "sentiment",
            num_classes=2 if classification else 1,
            class_names=["neg", "pos"] if classification else None,
        )
        return tuple((p.name, p.read_bytes()) for p in sorted((Path(tmp) / "s").iterdir()))


def _store_seeds() -> list[Case]:
    return [dict(_store_seed_bytes(False)), dict(_store_seed_bytes(True))]


def _mutate_parquet(data: bytes, rng: random.Random) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - already broken: mutate the bytes instead
        return fe.mutate_bytes(data, rng)
    names = table.column_names
    col = rng.choice(names)
    i = names.index(col)
    r = rng.random()
    try:
        if r < 0.15:
            table = table.drop([col])
        elif r < 0.25:
            table = table.rename_columns(
                [rng.choice(names) if j == i else n for j, n in enumerate(names)]
            )
        elif r < 0.45:
            arr = table.column(col)
            typ = rng.choice(
                (
                    pa.string(),
                    pa.int64(),
                    pa.float64(),
                    pa.int32(),
                    pa.binary(),
                    pa.float16() if False else pa.float32(),
                    pa.binary(
                        max(
                            1,
                            (arr.type.byte_width if pa.types.is_fixed_size_binary(arr.type) else 4)
                            + rng.choice((-4, 4)),
                        )
                    ),
                )
            )
            if pa.types.is_fixed_size_binary(arr.type) and pa.types.is_fixed_size_binary(typ):
                vals = [(v.as_py() or b"") for v in arr]
                vals = [(v + b"\x00" * typ.byte_width)[: typ.byte_width] for v in vals]
                new = pa.array(vals, type=typ)
            elif pa.types.is_fixed_size_binary(arr.type) and pa.types.is_binary(typ):
                new = pa.array([v.as_py() for v in arr], type=typ)
            else:
                new = (
                    pa.array(
                        [None if v is None else v for v in arr.to_pylist()], type=pa.string()
                    ).cast(typ, safe=False)
                    if typ != pa.string()
                    else pa.array([str(v) for v in arr.to_pylist()], type=pa.string())
                )
            table = table.set_column(i, pa.field(col, new.type), new)
        elif r < 0.55:
            mask = pa.array([rng.random() < 0.5 for _ in range(len(table))])
            new = pa.compute.if_else(
                mask, pa.nulls(len(table), table.column(col).type), table.column(col)
            )
            table = table.set_column(i, table.schema.field(i), new)
        elif r < 0.7:
            idx = rng.choice(([0, 0, 1, 2], [0], [], [2, 1, 0, 1], list(range(len(table))) * 3))
            table = table.take(pa.array(idx, type=pa.int64()))
        elif r < 0.8 and pa.types.is_fixed_size_binary(table.column(col).type):
            vals = bytearray(b"".join(v.as_py() or b"" for v in table.column(col)))
            if vals:
                k = rng.randrange(len(vals) // 4) * 4
                vals[k : k + 4] = rng.choice(
                    (b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f")
                )
                w = table.column(col).type.byte_width
                new = pa.array(
                    [bytes(vals[j : j + w]) for j in range(0, len(vals), w)],
                    type=table.column(col).type,
                )
                table = table.set_column(i, table.schema.field(i), new)
        elif r < 0.9:
            field_ = table.schema.field(i)
            table = table.set_column(
                i,
                field_.with_metadata({"shape": rng.choice(("9,9", "", "x", "-1,2"))}),
                table.column(i),
            )
            table = table.replace_schema_metadata(
                rng.choice((None, {"msaflow.schema_version": "1"}))
            )
        else:
            if col in ("id", "video_id", "clip_id"):
                vals = table.column(col).to_pylist()
                vals = [vals[0]] * len(vals)
                table = table.set_column(
                    i, table.schema.field(i), pa.array(vals, type=table.column(col).type)
                )
            else:
                return fe.mutate_bytes(data, rng)
        buf = io.BytesIO()
        pq.write_table(
            table,
            buf,
            row_group_size=rng.choice((1, 2, 1 << 20)),
            compression=rng.choice(("NONE", "ZSTD", "SNAPPY")),
        )
        return buf.getvalue()
    except (pa.ArrowException, ValueError, TypeError, IndexError):
        return fe.mutate_bytes(data, rng)


def _mutate_store(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    case = dict(case)
    case.pop(".fixup", None)
    for _ in range(rng.choice((1, 1, 2))):
        r = rng.random()
        if r < 0.45:
            text = case.get("manifest.json", b"{}").decode("utf-8", "replace")
            try:
                tree = json.loads(text)
                tree = fe.mutate_tree(tree, rng)
                text = json.dumps(tree, indent=rng.choice((None, 2)))
                if rng.random() < 0.1:
                    text = fe.duplicate_json_key(text, rng)
                case["manifest.json"] = text.encode()
            except ValueError:
                case["manifest.json"] = fe.mutate_bytes(text.encode(), rng)
        elif r < 0.55:
            case["manifest.json"] = fe.mutate_bytes(case.get("manifest.json", b""), rng)
        else:
            pqs = [k for k in case if k.endswith(".parquet")]
            if not pqs:
                continue
            k = rng.choice(pqs)
            if rng.random() < 0.6:
                case[k] = _mutate_parquet(case[k], rng)
            else:
                case[k] = fe.mutate_bytes(case[k], rng, [case[o] for o in pqs if o != k])
    if rng.random() < 0.85:
        case[".fixup"] = b""
    return case


def fixup_store(case_dir: Path) -> None:
    """Recompute the manifest's sha256, crc32 and bytes of the files it lists (best effort)."""
    from msaflow.feature_store.schema import file_crc32, file_sha256

    mpath = case_dir / "manifest.json"
    try:
        d = json.loads(mpath.read_text())
        for entry in d["files"].values():
            p = case_dir / entry["file"]
            if p.is_file() and p.parent == case_dir:
                entry.update(sha256=file_sha256(p), crc32=file_crc32(p), bytes=p.stat().st_size)
        mpath.write_text(json.dumps(d))
    except Exception:  # noqa: BLE001 - a manifest the mutation broke stays as it is
        pass


def _run_store(case_dir: Path, work: Path) -> Any:
    from msaflow.commands import data as cli
    from msaflow.feature_store.schema import load_dataset, validate_dataset

    if (case_dir / ".fixup").exists():
        fixup_store(case_dir)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for as_json in (False, True):  # what `data info` prints, in process
            try:
                cli.info(case_dir, as_json=as_json)
            except SystemExit as exc:
                raise AssertionError(f"data info exited {exc.code}") from None
            except Exception as exc:  # typer.Exit(2) after a clean one-line error is fine
                if type(exc).__name__ != "Exit" or getattr(exc, "exit_code", 2) != 2:
                    raise
    load_dataset(case_dir, verify=True)
    return validate_dataset(case_dir)


def _cli_store(case_dir: Path, work: Path) -> list[str]:
    if (case_dir / ".fixup").exists():
        fixup_store(case_dir)
    return ["data", "validate", str(case_dir)]


# --- 5/7. YAML: --params, --space, best.yaml ------------------------------------------------------
YAML_SNIPPETS = (
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
    "x: !!python/object/apply:os.system ['touch \"$FUZZ_MARKER\"']\n",
    "x: !!python/name:os.system\n",
    "x: !!binary aGVsbG8=\n",
    "x: !!set {a, b}\n",
    "x: 2001-12-14\n",
    "x: 2001-12-14t21:59:43.10-05:00\n",
    "x: &r [*r]\n",
    "<<: {lr: 1}\n",
    "? [a, b]\n: 1\n",
    "x: 0x1F\n",
    "x: 1e999\n",
    "x: .nan\n",
    "x: -.inf\n",
    "x: 0o17\n",
    "x: 1_000\n",
    "x: ~\n",
    "x: " + "[" * 200 + "]" * 200 + "\n",
    "x: |\n  multi\n  line\n",
    "---\n",
    "...\n",
    "\t\n",
    "\ufeff",
    "%YAML 1.1\n---\n",
    "x: !custom 1\n",
    "x: 12345678901234567890123456789012345678901234567890\n",
)


def _yaml_seed(kind: str) -> bytes:
    if kind == "params":
        return (
            b"model:\n  alpha: 0.5\n  delta: 0.1\n  dropout: 0.1\ntrain:\n  lr: 0.001\n  epochs: "
            b"3\n  batch_size: 8\n"
        )
    if kind == "space":
        return (
            b"alpha: {low: 0.1, high: 1.0}\nlambda1: {low: 0.01, high: 1.0, log: true}\n"
            b"lr: {low: 0.0001, high: 0.01, log: true, type: float, target: train}\n"
            b"modulation_epochs: {low: 1, high: 5, type: int}\ndelta: null\n"
        )
    # best.yaml exactly as tasks.tuning.write_best writes it
    import yaml

    body = yaml.safe_dump(
        {
            "model": {"alpha": 0.7342, "delta": 0.1203, "lambda1": 0.0451, "lambda2": 0.0032},
            "train": {"lr": 0.00123},
        },
        sort_keys=True,
    )
    return (
        "# best params of Optuna study 'fuzz' (mmafnet, valid/mae=0.812, trial 7)\n"
        "# use: msaflow run --model mmafnet --params best.yaml\n" + body
    ).encode()


def _mutate_yaml(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    import yaml

    ((name, data),) = case.items()
    for _ in range(rng.choice((1, 1, 2, 3))):
        r = rng.random()
        if r < 0.4:
            try:
                from msaflow.tasks.config import _NoAliasLoader

                # no aliases: walking an alias bomb's tree here would hang the fuzzer itself (a
                # harness bug the long campaign showed as "hang"); alias inputs still reach the
                # reader as text
                tree = yaml.load(data.decode("utf-8", "replace"), Loader=_NoAliasLoader)
                tree = fe.mutate_tree(tree if tree is not None else {}, rng)
                data = yaml.safe_dump(
                    tree, default_flow_style=rng.choice((None, True, False))
                ).encode()
            except Exception:  # noqa: BLE001 - not YAML (or not JSON-like) any more
                data = fe.mutate_bytes(data, rng)
        elif r < 0.65:
            lines = data.split(b"\n")
            i = rng.randrange(len(lines) + 1)
            snippet = rng.choice(YAML_SNIPPETS).encode()
            if rng.random() < 0.5 and lines:  # under an existing key, at its indentation
                snippet = b"\n".join(b"  " + s for s in snippet.split(b"\n"))
            data = b"\n".join(lines[:i] + [snippet] + lines[i:])
        elif r < 0.75:  # duplicate a line (duplicate keys)
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            data = b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
        else:
            data = fe.mutate_bytes(data, rng, [v for s in seeds for v in s.values()])
    return {name: data}


def _run_params(case_dir: Path, work: Path) -> Any:
    from msaflow.tasks.checks import check_pipeline_inputs

    return check_pipeline_inputs(params_file=str(_one(case_dir, ".yaml")))


def _run_space(case_dir: Path, work: Path) -> Any:
    from msaflow.tasks.tuning import load_search_space

    return load_search_space("mmafnet", _one(case_dir, ".yaml"))


# --- 3. raw-input manifest CSV, 4. per-frame facial CSVs and WAV ----------------------------------
def _manifest_csv_seed() -> list[Case]:
    csv = (
        "id,label,split,text,audio_path,visual_path,words\n"
        'u1,1.5,train,hello world,a.wav,v.csv,"[[""hello"",0.0,0.4],[""world"",0.4,0.9]]"\n'
        "u2,-0.5,dev,bye,a.wav,v.csv,\n"
        "u3,0,test,so so,a.wav,v.csv,\n"
    )
    csv2 = "id,label,split,text,timings_path\nu1,1,train,hi,t.csv\nu2,2,val,yo,t.csv\n"
    return [
        {"manifest.csv": csv.encode()},
        {"manifest.csv": csv2.encode(), "t.csv": b"word,start,end\nhi,0,0.5\n"},
    ]


CSV_SNIPPETS = (
    b",",
    b'"',
    b'""',
    b"\n",
    b"\r\n",
    b"\x00",
    b"nan",
    b"inf",
    b"-1e400",
    b"../../etc/hostname",
    b"/etc/hostname",
    b"id",
    b"label,label",
    b'[["a",1e308,-1]]',
    b'[["a","x",0]]',
    b"[" * 500,
    b"1" * 400,
    b";",
    b"\t",
    b"\xef\xbb\xbf",
    b"split",
    b"TEST",
    b"0x10",
)


def _mutate_csv(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    case = dict(case)
    name = rng.choice(sorted(case))
    data = case[name]
    for _ in range(rng.choice((1, 1, 2, 3))):
        r = rng.random()
        if r < 0.4:
            i = rng.randrange(len(data) + 1)
            data = data[:i] + rng.choice(CSV_SNIPPETS) + data[i:]
        elif r < 0.6:  # replace one cell
            lines = data.split(b"\n")
            li = rng.randrange(len(lines))
            cells = lines[li].split(b",")
            cells[rng.randrange(len(cells))] = rng.choice(CSV_SNIPPETS)
            lines[li] = b",".join(cells)
            data = b"\n".join(lines)
        elif r < 0.7:  # duplicate a row or a column
            lines = data.split(b"\n")
            if rng.random() < 0.5:
                li = rng.randrange(len(lines))
                lines.insert(li, lines[li])
            else:
                k = rng.randrange(8)
                lines = [
                    b",".join((cs := ln.split(b","))[: k + 1] + cs[k : k + 1] + cs[k + 1 :])
                    for ln in lines
                ]
            data = b"\n".join(lines)
        else:
            data = fe.mutate_bytes(data, rng, [v for s in seeds for v in s.values()])
    case[name] = data
    return case


def _run_manifest_csv(case_dir: Path, work: Path) -> Any:
    from msaflow.feature_store.extract import read_extraction_manifest

    return read_extraction_manifest(case_dir / "manifest.csv")


def _facial_seeds() -> list[Case]:
    from msaflow.feature_store.extract.visual import FACET_COLUMNS, OPENFACE_COLUMNS

    rows_of = []
    cols = ["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_COLUMNS]
    lines = [", ".join(cols)]
    for f in range(4):
        lines.append(
            ", ".join(
                [str(f + 1), "0", f"{f / 30:.3f}", "0.98", "1" if f != 2 else "0"]
                + [f"{(f * 7 + j) % 5 / 5:.2f}" for j in range(len(OPENFACE_COLUMNS))]
            )
        )
    rows_of.append({"openface.csv": ("\n".join(lines) + "\n").encode()})
    cols = ["Frametime", *FACET_COLUMNS]
    lines = ["\t".join(cols)]
    for f in range(4):
        lines.append(
            "\t".join(
                [f"{f / 30:.3f}"] + [f"{(f + j) % 3 - 1:.1f}" for j in range(len(FACET_COLUMNS))]
            )
        )
    rows_of.append({"facet.csv": ("\n".join(lines) + "\n").encode()})
    cols = ["Timestamp", "NoOfFaces", *FACET_COLUMNS]
    lines = ["#Study Name,fuzz", "#Respondent,1", ",".join(cols)]
    for f in range(3):
        lines.append(",".join([str(1000 + 33 * f), "1"] + ["0.5"] * len(FACET_COLUMNS)))
    rows_of.append({"imotions.csv": ("\n".join(lines) + "\n").encode()})
    return rows_of


def _run_facial(case_dir: Path, work: Path) -> Any:
    from msaflow.feature_store.extract.visual import read_visual_csv

    return read_visual_csv(_one(case_dir, ".csv"))


def _wav_seeds() -> list[Case]:
    import soundfile as sf

    out = []
    for sr, ch, subtype in ((16000, 1, "PCM_16"), (8000, 2, "PCM_16"), (16000, 1, "FLOAT")):
        buf = io.BytesIO()
        t = np.arange(int(sr * 0.02)) / sr
        y = np.sin(2 * np.pi * 220 * t)[:, None].repeat(ch, 1) * 0.3
        sf.write(buf, y, sr, format="WAV", subtype=subtype)
        out.append({"audio.wav": buf.getvalue()})
    return out


def _mutate_wav(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    ((name, data),) = case.items()
    r = rng.random()
    if r < 0.35 and len(data) >= 44:  # RIFF/fmt/data header fields: sizes, channels, rate, bits
        off = rng.choice((4, 16, 22, 24, 28, 32, 34, 40))
        size = 2 if off in (22, 32, 34) else 4
        val = rng.choice(fe.INTERESTING_INTS) % (1 << (8 * size))
        data = data[:off] + val.to_bytes(size, "little") + data[off + size :]
    else:
        data = fe.mutate_bytes(data, rng, [v for s in seeds for v in s.values()])
    return {name: data}


def _run_wav(case_dir: Path, work: Path) -> Any:
    from msaflow.feature_store.extract.audio import load_wav

    return load_wav(_one(case_dir, ".wav"))


# --- 6. checkpoints -------------------------------------------------------------------------------
def _ckpt_seeds() -> list[Case]:
    import torch

    buf = io.BytesIO()
    torch.save(
        {
            "epoch": 3,
            "model": {"w": torch.ones(2, 2), "b": torch.zeros(2)},
            "best": 0.5,
            "rng": {"torch": torch.get_rng_state()[:16], "python": [3, [1, 2, 3], None]},
        },
        buf,
    )
    return [{"last.pt": buf.getvalue()}]


def _mutate_ckpt(case: Case, rng: random.Random, seeds: list[Case]) -> Case:
    ((name, data),) = case.items()
    if rng.random() < 0.6:  # into the zip: mutate the pickle torch wrote, re-zip
        try:
            zin = zipfile.ZipFile(io.BytesIO(data))
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
                for info in zin.infolist():
                    blob = zin.read(info)
                    if info.filename.endswith("data.pkl"):
                        blob = rng.choice(fe.PICKLE_MUTATIONS + fe.BYTE_MUTATIONS)(blob, rng)
                    elif rng.random() < 0.1:
                        blob = fe.mutate_bytes(blob, rng)
                    zout.writestr(info.filename, blob)
            return {name: out.getvalue()}
        except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError):
            pass
    return {name: fe.mutate_bytes(data, rng, [v for s in seeds for v in s.values()])}


def _run_ckpt(case_dir: Path, work: Path) -> Any:
    from msaflow.tasks.train import load_checkpoint

    return load_checkpoint(_one(case_dir, ".pt"), required=("epoch", "model"))


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "pickle",
            _pickle_seeds,
            _mutate_pickle,
            _run_pickle,
            _data_errors,
            "W1",
            cli=_cli_pickle,
        ),
        Target(
            "store", _store_seeds, _mutate_store, _run_store, _data_errors, "W1", cli=_cli_store
        ),
        Target(
            "manifest_csv", _manifest_csv_seed, _mutate_csv, _run_manifest_csv, _data_errors, "H7"
        ),
        Target("facial_csv", _facial_seeds, _mutate_csv, _run_facial, _data_errors, "H7"),
        Target("wav", _wav_seeds, _mutate_wav, _run_wav, _data_errors, "H7"),
        Target(
            "params_yaml",
            lambda: [{"params.yaml": _yaml_seed("params")}],
            _mutate_yaml,
            _run_params,
            _config_errors,
            "H6",
        ),
        Target(
            "space_yaml",
            lambda: [{"space.yaml": _yaml_seed("space")}],
            _mutate_yaml,
            _run_space,
            _config_errors,
            "H5",
        ),
        Target("checkpoint", _ckpt_seeds, _mutate_ckpt, _run_ckpt, _data_errors, "H4"),
        Target(
            "best_yaml",
            lambda: [{"best.yaml": _yaml_seed("best")}],
            _mutate_yaml,
            _run_params,
            _config_errors,
            "H6",
        ),
    )
}
# The order of issue 20's list of readers.
ORDER = (
    "pickle",
    "store",
    "manifest_csv",
    "facial_csv",
    "wav",
    "params_yaml",
    "space_yaml",
    "checkpoint",
    "best_yaml",
)

if str(Path(__file__).resolve().parents[2]) not in sys.path:  # the project root, for bench/ runs
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("FUZZ_MARKER", "/nonexistent/fuzz-marker")
