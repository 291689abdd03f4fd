"""The GroupLens MovieLens releases: where each lives and how its files are laid out.

Apart from :mod:`mtrec.data.movielens` so that :mod:`mtrec.data.sources`, which fetches a
release, and the loader, which reads one, both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtrec.data.formats import Scale


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

    @property
    def scale(self) -> Scale:
        return Scale(*self.rating_scale, self.name)


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
