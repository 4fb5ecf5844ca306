"""The files of a training run: checksummed checkpoints, a lock, and metrics records as strict JSON.

Nothing here overwrites good data with bad: writes are atomic (a temporary file, then a rename), a
checkpoint carries a format version and the SHA-256 of its payload and is refused whole when either
is wrong, and a record with a non-finite number is written with ``null`` and ``"diverged": true``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import itertools
import json
import math
import os
from pathlib import Path

import jax
import numpy as np
from flax import serialization

CHECKPOINT_FORMAT = "eqjax-checkpoint"
CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes):
    """Write ``data`` to ``path`` through a temporary file of this process and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str):
    """:func:`atomic_write_bytes` of ``text`` (UTF-8): a file rewritten whole (a run's records on
    resume) is either the old one or the new one, never truncated."""
    atomic_write_bytes(path, text.encode())


def save_figure(fig, path: Path, dpi: int = 120):
    """A matplotlib figure written as PNG with :func:`atomic_write_bytes`: a kill while drawing
    leaves the previous plot, never half a file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buffer.getvalue())


def fresh_directory(parent: Path, name: str) -> Path:
    """A new directory ``parent/name``, suffixed ``-2``, ``-3``... when taken (two runs started in
    the same second never share one)."""
    for suffix in itertools.count(1):
        path = parent / (name if suffix == 1 else f"{name}-{suffix}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue


def save_checkpoint(path: Path, blob: dict):
    """``blob`` (a pytree of arrays and numbers) flax-serialized, wrapped with format, version and
    checksum, written atomically."""
    payload = serialization.to_bytes(blob)
    wrapper = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    atomic_write_bytes(path, serialization.msgpack_serialize(wrapper))


def _verified_payload(path: Path) -> bytes:
    if not path.exists():
        raise SystemExit(f"{path} is missing: there is nothing to resume from (start a new run instead)")
    try:
        wrapper = serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises several types for garbage
        raise SystemExit(f"{path} is not a readable checkpoint ({type(error).__name__}); it was not loaded") from None
    if not isinstance(wrapper, dict) or wrapper.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is not an eqjax checkpoint; it was not loaded")
    if wrapper.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"{path} has checkpoint version {wrapper.get('version')!r}, this code reads "
                         f"{CHECKPOINT_VERSION}; it was not loaded")
    payload = wrapper.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != wrapper.get("sha256"):
        raise SystemExit(f"{path} fails its checksum (corrupt or truncated); it was not loaded")
    return payload


def load_checkpoint(path: Path, target: dict) -> dict:
    """The checkpoint at ``path`` restored into the structure of ``target``; ``SystemExit`` with a
    clear message when it is missing, corrupt, of another version or of another model."""
    payload = _verified_payload(path)
    try:
        restored = serialization.from_bytes(target, payload)
    except Exception as error:
        raise SystemExit(f"{path} does not match this run's model and optimizer ({error}); it was not loaded") from None
    shapes = lambda tree: [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]
    if shapes(restored) != shapes(target):
        raise SystemExit(f"{path} holds arrays of other shapes than this run's model (was config.json edited?); "
                         "it was not loaded")
    return restored


def read_checkpoint(path: Path) -> dict:
    """The verified checkpoint at ``path`` as nested dicts of arrays (no target structure needed)."""
    return serialization.msgpack_restore(_verified_payload(path))


def strict_json(record: dict) -> str:
    """``record`` as one line of valid JSON: non-finite numbers become ``null`` and the record gets
    ``"diverged": true``."""
    clean, diverged = {}, False
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value, diverged = None, True
        clean[key] = value
    if diverged:
        clean["diverged"] = True
    return json.dumps(clean, allow_nan=False)


class RunLock:
    """An exclusive lock on a run (or sweep) directory for as long as the ``with`` block runs; a
    second process gets a ``SystemExit`` naming the holder instead of writing into the same files.
    Taking it removes the temporary files of writes cut by a kill (the files they were replacing
    are whole, see :func:`atomic_write_bytes`)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise SystemExit(f"{self.path.parent} is in use by {holder}; wait for it to finish") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()
        for stale in self.path.parent.glob(".*.tmp"):
            stale.unlink()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        return False
