"""Where MovieLens comes from: the data cache, GroupLens, and a mirror on the Python package index.

Kept apart from reading (:mod:`mtrec.data.formats`) because fetching is about trust and
concurrency, not layouts. Sources are tried in order; the first that works wins, and the log
says which:

1. the data cache (``data.cache_dir``): a GroupLens archive, an extracted folder or the mirror
   wheel, each verified by its checksum (a copy that fails is removed and fetched again);
2. GroupLens, verified by MD5;
3. the package-index mirror (ML-100K only): the ``recbole==1.2.1`` wheel ships the data set.
   Only the wheel file is downloaded, with pip, and verified by SHA-256; recbole is never
   installed or imported.

Downloads go to a temporary file that is renamed into place once verified, under a file lock on
the cache, so concurrent processes fetch once and a failed download never leaves a partial file.
What is found is handed over unparsed, as :class:`Files`, to the caller's ``parse``, which runs
inside the lock and inside the fallback: a fresh download that cannot be read moves on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from mtrec.data.formats import DataError
from mtrec.data.variants import Variant
from mtrec.files import atomic_path

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{archive}"

T = TypeVar("T")


@dataclass(frozen=True)
class Files:
    """One data set's files as found, not parsed yet: their bytes and the layouts of their names."""

    ratings: bytes
    ratings_layout: str
    items: bytes | None
    items_layout: str | None
    where: str  # the ratings file, as messages name it
    source: str  # as the log names it


@dataclass(frozen=True)
class Mirror:
    """A wheel on the Python package index that carries a copy of a data set."""

    requirement: str
    wheel: str
    sha256: str
    folder: str  # folder of the data files inside the wheel
    ratings_file: str
    items_file: str
    ratings_sha256: str  # of the ratings file itself, checked as it is read


MIRRORS: dict[str, Mirror] = {
    "ml-100k": Mirror(
        requirement="recbole==1.2.1",
        wheel="recbole-1.2.1-py3-none-any.whl",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        folder="recbole/dataset_example/ml-100k",
        ratings_file="ml-100k.inter",
        items_file="ml-100k.item",
        ratings_sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    )
}


def obtain(spec: Variant, cache: Path, parse: Callable[[Files], T]) -> T:
    """``parse`` the files of ``spec`` from the cache, else from the first source that works."""
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{spec.name}.lock")):
        cached = _cached(spec, cache)
        return parse(cached) if cached else _fetch(spec, cache, parse)


def _cached(spec: Variant, cache: Path) -> Files | None:
    archive = cache / spec.archive
    if archive.exists():
        if _verified(archive, "md5", spec.md5):
            return _archive_files(archive, spec, f"cache {archive}")
        _discard(archive, "its MD5 does not match the GroupLens archive")
    folder = cache / spec.folder
    if (folder / spec.ratings_file).exists():
        items = folder / spec.items_file
        return Files(
            read_bytes(folder / spec.ratings_file),
            spec.ratings_file,
            read_bytes(items) if items.exists() else None,
            spec.items_file,
            str(folder / spec.ratings_file),
            f"cache {folder}",
        )
    mirror = MIRRORS.get(spec.name)
    if mirror and (cache / mirror.wheel).exists():
        wheel = cache / mirror.wheel
        if _verified(wheel, "sha256", mirror.sha256):
            return _mirror_files(wheel, mirror, f"cache {wheel}")
        _discard(wheel, "its SHA-256 does not match the published wheel")
    return None


def _fetch(spec: Variant, cache: Path, parse: Callable[[Files], T]) -> T:
    tried = [f"the cache {cache} (no {spec.archive}, {spec.folder}/ or mirror wheel)"]
    url = GROUPLENS_URL.format(archive=spec.archive)
    try:
        archive = download_url(url, cache / spec.archive, "md5", spec.md5)
        return parse(_archive_files(archive, spec, f"GroupLens {url}"))
    except (OSError, DataError) as error:
        log.warning("GroupLens download failed (%s); trying the next source", error)
        tried.append(f"GroupLens {url}: {error}")
    mirror = MIRRORS.get(spec.name)
    if mirror:
        try:
            wheel = download_wheel(mirror, cache)
            return parse(_mirror_files(wheel, mirror, f"package index {mirror.requirement}"))
        except (OSError, DataError, subprocess.SubprocessError) as error:
            log.warning("Package-index mirror failed (%s)", error)
            tried.append(f"package index {mirror.requirement}: {error}")
    raise DataError(
        f"Could not obtain MovieLens {spec.name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: put {spec.archive} (from GroupLens) into {cache}/, "
        f"or set data.path=<folder or ratings file> to a local copy."
    )


def _zip_files(
    archive: Path, folder: str, ratings: str, items: str, source: str, sha256: str | None = None
) -> Files:
    """The ratings and item files in ``folder`` of a GroupLens archive or a mirror wheel, the
    ratings checked against their published ``sha256`` where there is one."""
    member, items_member = f"{folder}/{ratings}", f"{folder}/{items}"
    with zipfile.ZipFile(archive) as z:
        raw = z.read(member)
        if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
            raise DataError(f"{archive}: {ratings} does not match its published SHA-256")
        items_raw = z.read(items_member) if items_member in z.namelist() else None
    return Files(raw, ratings, items_raw, items, f"{archive}:{member}", source)


def _archive_files(archive: Path, spec: Variant, source: str) -> Files:
    return _zip_files(archive, spec.folder, spec.ratings_file, spec.items_file, source)


def _mirror_files(wheel: Path, mirror: Mirror, source: str) -> Files:
    return _zip_files(
        wheel, mirror.folder, mirror.ratings_file, mirror.items_file, source, mirror.ratings_sha256
    )


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            f"{path} cannot be read ({error.strerror or error}). Fix: make it readable "
            f"(e.g. chmod u+r {path}) or point data.path at a readable copy."
        ) from error


def download_url(url: str, target: Path, algorithm: str, expected: str | None) -> Path:
    """Download ``url`` to ``target`` atomically, verifying its checksum before the rename."""
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        _check(tmp, algorithm, expected, what=url)
    return target


def download_wheel(mirror: Mirror, cache: Path) -> Path:
    """Fetch the mirror wheel file with pip (no install, no dependencies) into ``cache``."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--quiet", mirror.requirement, "-d", tmp]
        log.info("Downloading %s from the package index", mirror.requirement)
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        fetched = Path(tmp) / mirror.wheel
        if done.returncode != 0 or not fetched.exists():
            raise DataError(f"pip download failed: {done.stderr.strip()[-500:]}")
        _check(fetched, "sha256", mirror.sha256, what=mirror.wheel)
        os.replace(fetched, cache / mirror.wheel)
    return cache / mirror.wheel


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, algorithm: str, expected: str | None) -> bool:
    return expected is None or file_digest(path, algorithm) == expected


def _check(path: Path, algorithm: str, expected: str | None, what: str) -> None:
    if expected is None:
        log.warning("No known checksum for %s; using it unverified", what)
        return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"Checksum mismatch for {what}: {algorithm} {actual}, expected {expected}. "
            "The file was discarded; it is fetched again next time."
        )


def _discard(path: Path, reason: str) -> None:
    log.warning("Removing cached %s: %s; it will be fetched again", path, reason)
    path.unlink(missing_ok=True)
