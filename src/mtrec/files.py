"""Atomic file writes: a temporary file in the target folder, then a rename.

A process killed mid-write leaves the previous file intact, never a truncated one.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` if the block ends
    without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path.parent, f".{path.name}.")
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _new_file(folder: Path, prefix: str) -> str:
    """An empty file of a fresh name in ``folder``, with the mode the umask gives any new file
    (``tempfile.mkstemp`` makes it 0600, and the rename would keep that)."""
    while True:
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}")
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return name
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that renames a finished file into place.

    Lightning's own writer (``_atomic_save``) goes through an fsspec transaction whose
    temporary file lies in the system temp folder: when that folder is on another file
    system the final step is a copy, and a kill during it leaves a truncated checkpoint.
    Here the temporary file lies beside the target, is synced, then renamed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
