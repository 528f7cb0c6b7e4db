"""Per-input feature cache: ``$MSAFLOW_HOME/cache/features/<extractor>/<key>.npz``, written
atomically.

The key is ``sha256(extractor name | version | canonical config JSON | content hash)``, where the
content hash is the sha256 of the input file's bytes (audio, visual) or of the text + word timings.
Changing an input, the extractor version or any config value therefore misses; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from msaflow.settings import msaflow_home


def sha256_text(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def cache_root() -> Path:
    return msaflow_home() / "cache" / "features"


class FeatureCache:
    """Cache of one extractor (name, version, config); counts hits and misses."""

    def __init__(
        self, extractor: str, version: str, config: dict[str, Any], root: Path | None = None
    ):
        self.extractor = extractor
        self.version = version
        self.config = config
        self.dir = (root or cache_root()) / extractor
        self._prefix = sha256_text(extractor, version, config)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def key(self, content_hash: str) -> str:
        return hashlib.sha256(f"{self._prefix}|{content_hash}".encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (FileNotFoundError, OSError, ValueError, EOFError):  # absent or torn -> recompute
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return arrays

    def has(self, key: str) -> bool:
        """Whether ``key`` is cached (counted as a hit or a miss)."""
        found = self.path(key).is_file()
        with self._lock:
            if found:
                self.hits += 1
            else:
                self.misses += 1
        return found

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{key}.", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


def load_entry(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
