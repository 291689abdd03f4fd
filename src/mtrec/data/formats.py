"""How MovieLens files are read: layouts, sniffing, parsing, and the rules a ratings table obeys.

Kept apart from where the files come from (:mod:`mtrec.data.sources`) so that every copy, a user's
own file, a cached folder or a member of an archive or wheel, passes the same checks, each problem
named with its file, line and fix. Bytes in, tables out: nothing here touches the disk. Ratings must
lie on a :class:`Scale`: the named variant's, else their layout's (:data:`LAYOUT_SCALES`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from mtrec.errors import UserError

log = logging.getLogger(__name__)

# The 19 genre flags of u.item, in column order.
# fmt: off
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
# fmt: on


class DataError(UserError, RuntimeError):
    """The data could not be found, fetched or read; the message says what to do."""


class Scale(NamedTuple):
    """The ratings a file may hold, and where that rule comes from (named in messages)."""

    low: float
    high: float
    origin: str  # a variant ("ml-100k") or a layout ("ratings.csv layout")


RATINGS_LAYOUTS = ("u.data", "ratings.dat", "ratings.csv", "ml-100k.inter")
ITEMS_LAYOUTS = ("u.item", "movies.dat", "movies.csv", "ml-100k.item")

LAYOUT_HELP = {
    "u.data": "u.data: tab-separated user item rating timestamp, no header",
    "ratings.dat": "ratings.dat: user::item::rating::timestamp, no header",
    "ratings.csv": "ratings.csv: comma-separated, header userId,movieId,rating,timestamp",
    "ml-100k.inter": "ml-100k.inter: tab-separated, header user_id:token item_id:token "
    "rating:float timestamp:float",
}
KNOWN_LAYOUTS = "; ".join(LAYOUT_HELP.values())

# The scale of a layout when no variant is named, which every GroupLens release in it fits: u.data
# and .inter hold ML-100K (1-5); ratings.dat ML-1M (1-5) and ML-10M (half stars, 0.5-5), so 0.5-5;
# ratings.csv (ML-20M and later, ml-latest) 0.5-5.
LAYOUT_SCALES = dict.fromkeys(("u.data", "ml-100k.inter"), (1, 5)) | dict.fromkeys(
    ("ratings.dat", "ratings.csv"), (0.5, 5)
)

# Header names (lower case) of the layouts that have a header, to the columns they hold.
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


def sniff(path: Path, raw: bytes) -> str:
    """The layout of a ratings file whose name does not say it, from its first line."""
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
        raise DataError(f"{path} is empty: it holds no ratings. Known layouts: {KNOWN_LAYOUTS}.")
    line = first[:80].decode("latin-1")
    raise DataError(
        f"{path}: unknown ratings layout (line 1: {line!r}). Known layouts: {KNOWN_LAYOUTS}. "
        "Fix: convert the file to one of them, or name it after its layout."
    )


def parse_ratings(
    raw: bytes, layout: str, scale: Scale | None = None, where: Path | str | None = None
) -> pd.DataFrame:
    """Parse one ratings file into columns user, item, rating, timestamp.

    Every problem is reported with the file and line. Ratings must lie on ``scale`` (None: that
    of ``layout``). Duplicate (user, item) rows keep the latest rating of the pair (by timestamp,
    then by line), with a warning: each pair is one observation for the split and the metrics.
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
    if scale is None:
        scale = Scale(*LAYOUT_SCALES[layout], f"{layout} layout")
    _check_scale(frame, scale, first_line, where)
    return _drop_duplicates(frame, first_line, where)


def _read_columns(raw: bytes, sep: str, positions: list[int], first_line: int):
    """The fast path: the columns at ``positions`` with their dtypes, or None if any line is off."""
    header = 0 if first_line == 2 else None
    try:
        frame = pd.read_csv(io.BytesIO(raw), sep=sep, header=header, skip_blank_lines=False)
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
    """The slow path, once the fast one failed: name the first bad line (of ``width`` fields)."""
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
                if COLUMNS[column] == "int64" and not value.lstrip("+-").isdigit():
                    kind = "id" if column in ("user", "item") else "value"
                    problem = number, f"{column} {kind} {value!r} is not an integer"
                    break
                if COLUMNS[column] == "float32" and not _is_number(value):
                    problem = number, f"{column} {value!r} is not a number"
                    break
        if problem:
            break
    number, reason = problem or (first_line, "cannot be parsed")  # fine lines, failing parser
    raise DataError(f"{where}, line {number}: {reason}. Expected {LAYOUT_HELP[layout]}.")


def _is_number(value: str) -> bool:
    try:
        return not pd.isna(float(value))
    except ValueError:
        return False


def _check_scale(frame: pd.DataFrame, scale: Scale, first_line: int, where) -> None:
    low, high = scale.low, scale.high
    outside = ((frame.rating < low) | (frame.rating > high)).to_numpy()
    if outside.any():
        row = int(outside.argmax())
        raise DataError(
            f"{where}, line {first_line + row}: rating {frame.rating.iloc[row]:g} is outside the "
            f"{scale.origin} scale {low:g}-{high:g}. Fix: set data.variant to the release the file "
            "comes from (ml-100k and ml-1m rate 1-5, ml-10m and later 0.5-5), or correct the line."
        )


def _drop_duplicates(frame: pd.DataFrame, first_line: int, where) -> pd.DataFrame:
    repeated = frame.duplicated(["user", "item"]).to_numpy()
    if not repeated.any():
        return frame
    row = int(repeated.argmax())
    by_time = frame.sort_values("timestamp", kind="stable")
    kept = by_time.index[~by_time.duplicated(["user", "item"], keep="last").to_numpy()]
    log.warning(
        "%s: %d duplicate (user, item) rows, the first at line %d (user %d, item %d); kept the "
        "latest rating of each pair (by timestamp, then by line), dropped %d rows",
        where,
        int(repeated.sum()),
        first_line + row,
        frame.user.iloc[row],
        frame.item.iloc[row],
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
        frame = pd.read_csv(io.StringIO(text.replace("::", "\t")), sep="\t", header=None, quoting=3)
    else:  # movies.csv
        frame = pd.read_csv(io.StringIO(text), sep=",", header=0)
    genres = [tuple(str(g).split("|")) for g in frame.iloc[:, 2]]
    return pd.DataFrame(
        {"item": frame.iloc[:, 0].astype("int64"), "title": frame.iloc[:, 1], "genres": genres}
    )
