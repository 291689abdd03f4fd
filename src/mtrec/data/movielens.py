"""Find, fetch, verify and parse MovieLens files into one ratings table.

Sources, tried in order (the first that works wins, and the log says which):

1. ``data.path`` when the user sets it: a folder or file in a common MovieLens layout.
2. The data cache (``data.cache_dir``): a GroupLens archive, an extracted folder or the
   package-index mirror, each verified by its checksum.
3. GroupLens, verified by MD5.
4. The package-index mirror (ML-100K only): the ``recbole==1.2.1`` wheel ships the data set.
   Only the wheel file is downloaded (verified by SHA-256); recbole is never installed.

Downloads go to a temporary file that is renamed into place once verified, under a file lock,
so concurrent processes fetch once and a failed download never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock

from mtrec.errors import UserError

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{archive}"

GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class Variant:
    """Where one GroupLens data set lives and how its files are laid out."""

    name: str
    folder: str  # top folder inside the GroupLens archive
    ratings_file: str
    items_file: str
    rating_scale: tuple[float, float]
    md5: str | None = None  # of the GroupLens archive, where known

    @property
    def archive(self) -> str:
        return f"{self.name}.zip"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "ml-100k", "ml-100k", "u.data", "u.item", (1, 5), "0e33842e24a9c977be4e0107933c0723"
        ),
        Variant("ml-1m", "ml-1m", "ratings.dat", "movies.dat", (1, 5)),
        Variant("ml-10m", "ml-10M100K", "ratings.dat", "movies.dat", (0.5, 5)),
        Variant("ml-20m", "ml-20m", "ratings.csv", "movies.csv", (0.5, 5)),
        Variant("ml-25m", "ml-25m", "ratings.csv", "movies.csv", (0.5, 5)),
        Variant("ml-32m", "ml-32m", "ratings.csv", "movies.csv", (0.5, 5)),
        Variant("ml-latest-small", "ml-latest-small", "ratings.csv", "movies.csv", (0.5, 5)),
    )
}


@dataclass(frozen=True)
class Mirror:
    """A wheel on the Python package index that carries a copy of a data set."""

    requirement: str
    wheel: str
    sha256: str
    folder: str  # folder of the data files inside the wheel
    ratings_sha256: str


MIRRORS: dict[str, Mirror] = {
    "ml-100k": Mirror(
        requirement="recbole==1.2.1",
        wheel="recbole-1.2.1-py3-none-any.whl",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        folder="recbole/dataset_example/ml-100k",
        ratings_sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    )
}


class DataError(UserError, RuntimeError):
    """The data could not be found, fetched or read; the message says what to do."""


@dataclass
class MovieLens:
    """One ratings table plus item metadata, with the raw ids of the source files."""

    ratings: pd.DataFrame  # user, item (int64), rating (float32), timestamp (int64)
    items: pd.DataFrame  # item (int64), title (str), genres (tuple of str)
    source: str


# --------------------------------------------------------------------------- entry point


def load_movielens(
    variant: str = "ml-100k", cache_dir: str | Path = "data", path: str | Path | None = None
) -> MovieLens:
    """Return the ratings and items of ``variant``, from ``path`` or the cache or a download."""
    if variant not in VARIANTS:
        raise DataError(f"Unknown data variant {variant!r}. Known variants: {', '.join(VARIANTS)}.")
    spec = VARIANTS[variant]
    if path is not None:
        data = read_path(Path(path), spec)
    else:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache / f".{variant}.lock")):
            data = _read_cached(spec, cache) or _fetch(spec, cache)
    log.info(
        "Loaded %s: %d ratings, %d users, %d items (source: %s)",
        variant,
        len(data.ratings),
        data.ratings.user.nunique(),
        data.ratings.item.nunique(),
        data.source,
    )
    return data


# --------------------------------------------------------------------------- sources


def _read_cached(spec: Variant, cache: Path) -> MovieLens | None:
    archive = cache / spec.archive
    if archive.exists():
        if _verified(archive, "md5", spec.md5):
            return read_zip(archive, spec.folder, spec, source=f"cache {archive}")
        _discard(archive, "its MD5 does not match the GroupLens archive")
    folder = cache / spec.folder
    if (folder / spec.ratings_file).exists():
        return read_path(folder, spec, source=f"cache {folder}")
    mirror = MIRRORS.get(spec.name)
    if mirror and (cache / mirror.wheel).exists():
        wheel = cache / mirror.wheel
        if _verified(wheel, "sha256", mirror.sha256):
            return read_mirror(wheel, mirror, source=f"cache {wheel}")
        _discard(wheel, "its SHA-256 does not match the published wheel")
    return None


def _fetch(spec: Variant, cache: Path) -> MovieLens:
    tried = [f"the cache {cache} (no {spec.archive}, {spec.folder}/ or mirror wheel)"]
    url = GROUPLENS_URL.format(archive=spec.archive)
    try:
        archive = download_url(url, cache / spec.archive, "md5", spec.md5)
        return read_zip(archive, spec.folder, spec, source=f"GroupLens {url}")
    except (OSError, DataError) as error:
        log.warning("GroupLens download failed (%s); trying the next source", error)
        tried.append(f"GroupLens {url}: {error}")
    mirror = MIRRORS.get(spec.name)
    if mirror:
        try:
            wheel = download_wheel(mirror, cache)
            return read_mirror(wheel, mirror, source=f"package index {mirror.requirement}")
        except (OSError, DataError, subprocess.SubprocessError) as error:
            log.warning("Package-index mirror failed (%s)", error)
            tried.append(f"package index {mirror.requirement}: {error}")
    raise DataError(
        f"Could not obtain MovieLens {spec.name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: put {spec.archive} (from GroupLens) into {cache}/, "
        f"or set data.path=<folder or ratings file> to a local copy."
    )


def download_url(url: str, target: Path, algorithm: str, expected: str | None) -> Path:
    """Download ``url`` to ``target`` atomically, verifying its checksum before the rename."""
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", delete=False
    ) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
            tmp.close()
            _check(Path(tmp.name), algorithm, expected, what=url)
            os.replace(tmp.name, target)
        finally:
            Path(tmp.name).unlink(missing_ok=True)
    return target


def download_wheel(mirror: Mirror, cache: Path) -> Path:
    """Fetch the mirror wheel file with pip (no install, no dependencies) into ``cache``."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            mirror.requirement,
            "-d",
            tmp,
        ]
        log.info("Downloading %s from the package index", mirror.requirement)
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        fetched = Path(tmp) / mirror.wheel
        if done.returncode != 0 or not fetched.exists():
            raise DataError(f"pip download failed: {done.stderr.strip()[-500:]}")
        _check(fetched, "sha256", mirror.sha256, what=mirror.wheel)
        os.replace(fetched, cache / mirror.wheel)
    return cache / mirror.wheel


# --------------------------------------------------------------------------- checksums


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


# --------------------------------------------------------------------------- parsing


def read_zip(archive: Path, folder: str, spec: Variant, source: str) -> MovieLens:
    with zipfile.ZipFile(archive) as z:
        member = f"{folder}/{spec.ratings_file}"
        ratings = parse_ratings(z.read(member), spec.ratings_file, spec, f"{archive}:{member}")
        items_member = f"{folder}/{spec.items_file}"
        names = set(z.namelist())
        items = (
            parse_items(z.read(items_member), spec.items_file) if items_member in names else None
        )
    return _assemble(ratings, items, source)


def read_mirror(wheel: Path, mirror: Mirror, source: str) -> MovieLens:
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(f"{mirror.folder}/ml-100k.inter")
        if hashlib.sha256(raw).hexdigest() != mirror.ratings_sha256:
            raise DataError(f"{wheel}: ml-100k.inter does not match its published SHA-256")
        ratings = parse_ratings(raw, "ml-100k.inter", VARIANTS["ml-100k"], f"{wheel}:ml-100k.inter")
        items = parse_items(z.read(f"{mirror.folder}/ml-100k.item"), "ml-100k.item")
    return _assemble(ratings, items, source)


RATINGS_LAYOUTS = ("u.data", "ratings.dat", "ratings.csv", "ml-100k.inter")

LAYOUT_HELP = {
    "u.data": "u.data: tab-separated user item rating timestamp, no header",
    "ratings.dat": "ratings.dat: user::item::rating::timestamp, no header",
    "ratings.csv": "ratings.csv: comma-separated, header userId,movieId,rating,timestamp",
    "ml-100k.inter": "ml-100k.inter: tab-separated, header user_id:token item_id:token "
    "rating:float timestamp:float",
}

# Header names of the layouts that have a header, to the columns they hold.
HEADER_COLUMNS = {
    "userid": "user",
    "user_id:token": "user",
    "movieid": "item",
    "item_id:token": "item",
    "rating": "rating",
    "rating:float": "rating",
    "timestamp": "timestamp",
    "timestamp:float": "timestamp",
}
COLUMNS = {"user": "int64", "item": "int64", "rating": "float32", "timestamp": "int64"}


def read_path(path: Path, spec: Variant, source: str | None = None) -> MovieLens:
    """Read a user-given folder or ratings file in one of :data:`RATINGS_LAYOUTS`."""
    if not path.exists():
        raise DataError(
            f"data.path={path} does not exist. Fix: point data.path at a MovieLens "
            f"folder or one of the files {', '.join(RATINGS_LAYOUTS)}."
        )
    if path.is_dir():
        found = [path / name for name in RATINGS_LAYOUTS if (path / name).exists()]
        if not found:
            raise DataError(
                f"data.path={path} holds none of {', '.join(RATINGS_LAYOUTS)}. "
                "Fix: point data.path at the folder that holds the ratings file."
            )
        ratings_path = found[0]
    else:
        ratings_path = path
    raw = _read_bytes(ratings_path)
    layout = (
        ratings_path.name if ratings_path.name in RATINGS_LAYOUTS else _sniff(ratings_path, raw)
    )
    ratings = parse_ratings(raw, layout, spec, where=ratings_path)
    items = None
    for name in ("u.item", "movies.dat", "movies.csv", "ml-100k.item"):
        if (ratings_path.parent / name).exists():
            items = parse_items(_read_bytes(ratings_path.parent / name), name)
            break
    return _assemble(ratings, items, source or f"data.path {ratings_path}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            f"{path} cannot be read ({error.strerror or error}). Fix: make it readable "
            f"(e.g. chmod u+r {path}) or point data.path at a readable copy."
        ) from error


def _sniff(path: Path, raw: bytes) -> str:
    first = raw.split(b"\n", 1)[0].strip()
    if b"::" in first:
        return "ratings.dat"
    if first.lower().startswith(b"userid,"):
        return "ratings.csv"
    if first.startswith(b"user_id:token"):
        return "ml-100k.inter"
    if first.count(b"\t") == 3:
        return "u.data"
    if not raw.strip():
        raise DataError(f"{path} is empty: it holds no ratings. Known layouts: {_layouts()}.")
    line = first[:80].decode("latin-1")
    raise DataError(
        f"{path}: unknown ratings layout (line 1: {line!r}). Known layouts: {_layouts()}. "
        "Fix: convert the file to one of them, or name it after its layout."
    )


def _layouts() -> str:
    return "; ".join(LAYOUT_HELP.values())


def parse_ratings(
    raw: bytes, layout: str, spec: Variant, where: Path | str | None = None
) -> pd.DataFrame:
    """Parse one ratings file into columns user, item, rating, timestamp.

    Every problem is reported with the file and line. Ratings must lie on ``spec``'s scale.
    Duplicate (user, item) rows keep the latest rating of the pair (by timestamp, then by
    line), with a warning: each pair is one observation for the split and the metrics.
    """
    where = where or layout
    if not raw.strip():
        raise DataError(f"{where} is empty: it holds no ratings. Expected {LAYOUT_HELP[layout]}.")
    if layout == "ratings.dat":
        raw = raw.replace(b"::", b"\t")
    sep = "," if layout == "ratings.csv" else "\t"
    if layout in ("ratings.csv", "ml-100k.inter"):
        header = raw.split(b"\n", 1)[0].decode("latin-1").strip().split(sep)
        named = {HEADER_COLUMNS.get(name.strip().lower()): i for i, name in enumerate(header)}
        missing = [column for column in COLUMNS if column not in named]
        if missing:
            raise DataError(
                f"{where}, line 1: the header {sep.join(header)!r} has no {' or '.join(missing)} "
                f"column. Expected {LAYOUT_HELP[layout]}."
            )
        if not raw.partition(b"\n")[2].strip():
            raise DataError(
                f"{where} holds a header but no ratings. Expected {LAYOUT_HELP[layout]}."
            )
        positions, first_line, width = [named[column] for column in COLUMNS], 2, len(header)
    else:
        positions, first_line, width = list(range(len(COLUMNS))), 1, len(COLUMNS)
    frame = _read_columns(raw, sep, positions, first_line)
    if frame is None:
        _raise_first_problem(raw, sep, positions, first_line, width, layout, where)
    _check_scale(frame, spec, first_line, where)
    return _drop_duplicates(frame, first_line, where)


def _read_columns(raw: bytes, sep: str, positions: list[int], first_line: int):
    """The fast path: the columns at ``positions`` with their dtypes, or None if any line is off."""
    try:
        frame = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if first_line == 2 else None,
            skip_blank_lines=False,
        )
    except (ValueError, pd.errors.ParserError):
        return None
    if first_line == 1 and frame.shape[1] != len(COLUMNS):
        return None
    frame = frame.iloc[:, positions]
    frame.columns = list(COLUMNS)
    try:
        for column, dtype in COLUMNS.items():
            values = frame[column]
            if dtype == "int64" and not pd.api.types.is_integer_dtype(values):
                return None
            if not pd.api.types.is_numeric_dtype(values) or values.isna().any():
                return None
        return frame.astype(COLUMNS)
    except (ValueError, TypeError):
        return None


def _raise_first_problem(raw, sep, positions, first_line, width, layout, where) -> None:
    """The slow path, taken only when the fast one failed: find and name the first bad line
    (``width`` fields expected on each)."""
    lines = raw.decode("latin-1").splitlines()[first_line - 1 :]
    problem = None
    for number, line in enumerate(lines, first_line):
        fields = line.split(sep)
        if not line.strip():
            problem = number, "the line is blank (remove it)"
        elif len(fields) != width:
            problem = number, f"{len(fields)} fields where {width} are expected"
        else:
            for column, position in zip(COLUMNS, positions, strict=True):
                value = fields[position].strip()
                if COLUMNS[column] == "int64" and not _is_integer(value):
                    kind = "id" if column in ("user", "item") else "value"
                    problem = number, f"{column} {kind} {value!r} is not an integer"
                    break
                if COLUMNS[column] == "float32" and not _is_number(value):
                    problem = number, f"{column} {value!r} is not a number"
                    break
        if problem:
            break
    if problem is None:  # the lines look right but the parser disagrees: show its reason
        problem = first_line, "cannot be parsed"
    number, reason = problem
    raise DataError(f"{where}, line {number}: {reason}. Expected {LAYOUT_HELP[layout]}.")


def _is_integer(value: str) -> bool:
    return value.lstrip("+-").isdigit()


def _is_number(value: str) -> bool:
    try:
        return not pd.isna(float(value))
    except ValueError:
        return False


def _check_scale(frame: pd.DataFrame, spec: Variant, first_line: int, where) -> None:
    low, high = spec.rating_scale
    outside = ((frame.rating < low) | (frame.rating > high)).to_numpy()
    if outside.any():
        row = int(outside.argmax())
        raise DataError(
            f"{where}, line {first_line + row}: rating {frame.rating.iloc[row]:g} is outside the "
            f"{spec.name} scale {low:g}-{high:g}. Fix: set data.variant to the release the file "
            "comes from (ml-100k and ml-1m rate 1-5, ml-10m and later 0.5-5), or correct the line."
        )


def _drop_duplicates(frame: pd.DataFrame, first_line: int, where) -> pd.DataFrame:
    repeated = frame.duplicated(["user", "item"]).to_numpy()
    if not repeated.any():
        return frame
    row = int(repeated.argmax())
    user, item = frame.user.iloc[row], frame.item.iloc[row]
    by_time = frame.sort_values("timestamp", kind="stable")
    kept = by_time.index[~by_time.duplicated(["user", "item"], keep="last").to_numpy()]
    log.warning(
        "%s: %d duplicate (user, item) rows, the first at line %d (user %d, item %d); kept the "
        "latest rating of each pair (by timestamp, then by line), dropped %d rows",
        where,
        int(repeated.sum()),
        first_line + row,
        user,
        item,
        len(frame) - len(kept),
    )
    return frame.loc[kept.sort_values()].reset_index(drop=True)


def parse_items(raw: bytes, layout: str) -> pd.DataFrame:
    """Parse item metadata into columns item, title, genres (a tuple of genre names)."""
    text = raw.decode("latin-1")
    if layout == "u.item":
        frame = pd.read_csv(io.StringIO(text), sep="|", header=None, quoting=3)
        flags = frame.iloc[:, 5:24].to_numpy().astype(bool)
        genres = [tuple(g for g, on in zip(GENRES_100K, row, strict=True) if on) for row in flags]
        return pd.DataFrame({"item": frame[0].astype("int64"), "title": frame[1], "genres": genres})
    if layout == "ml-100k.item":
        frame = pd.read_csv(io.StringIO(text), sep="\t", header=0, quoting=3, dtype=str)
        frame.columns = ["item", "title", "year", "genres"]
        titles = [
            t if pd.isna(y) else f"{t} ({y})" for t, y in zip(frame.title, frame.year, strict=True)
        ]
        genres = [tuple(str(g).split()) if not pd.isna(g) else () for g in frame.genres]
        return pd.DataFrame(
            {"item": frame["item"].astype("int64"), "title": titles, "genres": genres}
        )
    if layout == "movies.dat":
        text = text.replace("::", "\t")
        frame = pd.read_csv(io.StringIO(text), sep="\t", header=None, quoting=3)
    else:  # movies.csv
        frame = pd.read_csv(io.StringIO(text), sep=",", header=0)
    genres = [tuple(str(g).split("|")) for g in frame.iloc[:, 2]]
    return pd.DataFrame(
        {"item": frame.iloc[:, 0].astype("int64"), "title": frame.iloc[:, 1], "genres": genres}
    )


def _assemble(ratings: pd.DataFrame, items: pd.DataFrame | None, source: str) -> MovieLens:
    if items is None:
        ids = pd.Series(sorted(ratings.item.unique()), dtype="int64")
        items = pd.DataFrame(
            {"item": ids, "title": [f"item {i}" for i in ids], "genres": [()] * len(ids)}
        )
    return MovieLens(ratings=ratings, items=items, source=source)
