"""The MovieLens data as the rest of the project sees it: the known releases and one loader.

:func:`load_movielens` returns a :class:`MovieLens` (ratings plus item metadata) read from
``data.path`` when the user gives one (a folder or ratings file in a common MovieLens layout),
else from the data cache or a download. The work is split along its seams so that each part
can be read and tested alone: :mod:`mtrec.data.sources` finds and verifies the files (cache,
GroupLens, the package-index mirror, checksums, locks), :mod:`mtrec.data.formats` parses them
(layouts, checks, rating scales, duplicates), :mod:`mtrec.data.variants` lists the releases
(:data:`VARIANTS`, also importable from here); this module holds what other modules import:
:class:`MovieLens`, :class:`DataError`, :func:`check_variant` and :func:`load_movielens`.

The rating scale. A variant the caller names (``data.variant``) fixes it, and a file that
contradicts it is refused. With none named, one's own file needs no other setting: its ratings
are checked against the scale of its layout (:data:`mtrec.data.formats.LAYOUT_SCALES`):
ratings.csv 0.5-5 (half stars, ML-20M and later), ratings.dat 0.5-5 (ML-1M rates 1-5 and
ML-10M 0.5-5 in that layout, so the wider scale; name ml-1m to hold a file to 1-5), u.data and
.inter 1-5 (ML-100K). Without ``data.path`` an unnamed variant is ML-100K.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtrec.data import sources
from mtrec.data.formats import (
    ITEMS_LAYOUTS,
    RATINGS_LAYOUTS,
    DataError,
    Scale,
    parse_items,
    parse_ratings,
    sniff,
)
from mtrec.data.sources import Files, read_bytes
from mtrec.data.variants import VARIANTS
from mtrec.errors import ConfigError

__all__ = ["VARIANTS", "DataError", "MovieLens", "check_variant", "load_movielens"]

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "ml-100k"  # read when neither data.variant nor data.path is set


@dataclass
class MovieLens:
    """One ratings table plus item metadata, with the raw ids of the source files."""

    ratings: pd.DataFrame  # user, item (int64), rating (float32), timestamp (int64)
    items: pd.DataFrame  # item (int64), title (str), genres (tuple of str)
    source: str


def check_variant(variant: str | None) -> None:
    """The one check of ``data.variant``: a known release, or None (not named)."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(
            f"data.variant={variant} is not valid: use one of {', '.join(VARIANTS)} "
            "(null: ml-100k, or with data.path the layout's rating scale)."
        )


def load_movielens(
    variant: str | None = None, cache_dir: str | Path = "data", path: str | Path | None = None
) -> MovieLens:
    """Return the ratings and items from ``path``, else of ``variant`` from the cache or a
    download. ``variant`` None: not named (see the module notes on the rating scale)."""
    check_variant(variant)
    if path is not None:
        data = read_path(Path(path), VARIANTS[variant].scale if variant else None)
        name = variant or "data.path"
    else:
        spec = VARIANTS[variant or DEFAULT_VARIANT]
        data = sources.obtain(spec, Path(cache_dir), lambda files: parse(files, spec.scale))
        name = spec.name
    log.info(
        "Loaded %s: %d ratings, %d users, %d items (source: %s)",
        name,
        len(data.ratings),
        data.ratings.user.nunique(),
        data.ratings.item.nunique(),
        data.source,
    )
    return data


def read_path(path: Path, scale: Scale | None = None) -> MovieLens:
    """Read a user-given folder or ratings file in one of the layouts of
    :data:`~mtrec.data.formats.RATINGS_LAYOUTS`, with the item file found beside it.
    ``scale`` None: that of the file's layout."""
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
        path = found[0]
    raw = read_bytes(path)
    layout = path.name if path.name in RATINGS_LAYOUTS else sniff(path, raw)
    items = next(
        (path.parent / name for name in ITEMS_LAYOUTS if (path.parent / name).exists()), None
    )
    files = Files(
        raw,
        layout,
        read_bytes(items) if items else None,
        items.name if items else None,
        str(path),
        f"data.path {path}",
    )
    return parse(files, scale)


def parse(files: Files, scale: Scale | None) -> MovieLens:
    """Parse ``files``; an item file that is missing gives placeholder titles and no genres."""
    ratings = parse_ratings(files.ratings, files.ratings_layout, scale, files.where)
    if files.items is not None:
        items = parse_items(files.items, files.items_layout)
    else:
        ids = pd.Series(sorted(ratings.item.unique()), dtype="int64")
        items = pd.DataFrame(
            {"item": ids, "title": [f"item {i}" for i in ids], "genres": [()] * len(ids)}
        )
    return MovieLens(ratings=ratings, items=items, source=files.source)
