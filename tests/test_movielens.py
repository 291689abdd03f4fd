"""The data loader against a fake GroupLens archive, a fake package-index wheel, and one's own
files in each MovieLens layout."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import synthetic_ratings, write_u_data
from mtrec.data import movielens, sources
from mtrec.data.movielens import DataError, load_movielens
from mtrec.errors import ConfigError

RATINGS = synthetic_ratings(num_users=20, num_items=12, per_user=5)


def make_archive(tmp_path: Path) -> Path:
    folder = write_u_data(tmp_path / "src" / "ml-100k", RATINGS)
    archive = tmp_path / "server" / "ml-100k.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("u.data", "u.item"):
            z.write(folder / name, f"ml-100k/{name}")
    return archive


def make_wheel(tmp_path: Path) -> tuple[Path, bytes]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{r.user}\t{r.item}\t{r.rating}\t{r.timestamp}\n" for r in RATINGS.itertuples()
    )
    items = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tMovie {i}\t1990\tAction Sci-Fi\n" for i in sorted(RATINGS.item.unique())
    )
    wheel = tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter)
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.item", items)
        z.writestr(
            "recbole-1.2.1.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n",
        )
        z.writestr(
            "recbole-1.2.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("recbole-1.2.1.dist-info/RECORD", "")
    return wheel, inter.encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def grouplens(tmp_path, monkeypatch):
    """Serve a fake archive from a file:// URL, with its true MD5 registered."""
    archive = make_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(sources, "GROUPLENS_URL", (tmp_path / "server").as_uri() + "/{archive}")
    monkeypatch.setitem(
        movielens.VARIANTS, "ml-100k", replace(movielens.VARIANTS["ml-100k"], md5=md5)
    )
    return archive


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A fake wheel that the real ``pip download`` fetches from a local path."""
    wheel, inter = make_wheel(tmp_path)
    fake = replace(
        sources.MIRRORS["ml-100k"],
        requirement=str(wheel),
        sha256=sha256(wheel.read_bytes()),
        ratings_sha256=sha256(inter),
    )
    monkeypatch.setitem(sources.MIRRORS, "ml-100k", fake)
    return wheel


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "GROUPLENS_URL", (tmp_path / "nowhere").as_uri() + "/{archive}")


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")


def test_grouplens_download_is_verified_cached_and_reused(tmp_path, grouplens, caplog):
    cache = tmp_path / "cache"
    caplog.set_level("INFO")
    data = load_movielens("ml-100k", cache)
    assert len(data.ratings) == len(RATINGS) and data.source.startswith("GroupLens")
    assert cache_files(cache) == ["ml-100k.zip"]
    assert data.items.title.iloc[0] == "Movie 1 (1990)"
    grouplens.unlink()  # the server is gone: the cache must serve
    again = load_movielens("ml-100k", cache)
    assert again.source.startswith("cache") and again.ratings.equals(data.ratings)
    assert "source: cache" in caplog.text


def test_mirror_wheel_is_used_when_grouplens_fails(tmp_path, offline, mirror):
    cache = tmp_path / "cache"
    data = load_movielens("ml-100k", cache)
    assert data.source == f"package index {mirror}"
    assert data.ratings[["user", "item"]].equals(RATINGS[["user", "item"]])
    assert data.items.title.iloc[0] == "Movie 1 (1990)" and data.items.genres.iloc[0] == (
        "Action",
        "Sci-Fi",
    )
    assert cache_files(cache) == [mirror.name]


def test_checksum_mismatch_raises_and_leaves_no_partial_file(tmp_path, grouplens, monkeypatch):
    monkeypatch.setitem(
        movielens.VARIANTS, "ml-100k", replace(movielens.VARIANTS["ml-100k"], md5="0" * 32)
    )
    monkeypatch.setitem(
        sources.MIRRORS,
        "ml-100k",
        replace(sources.MIRRORS["ml-100k"], requirement=str(tmp_path / "missing.whl")),
    )
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as error:
        load_movielens("ml-100k", cache)
    message = str(error.value)
    assert "Checksum mismatch" in message and "GroupLens" in message and "package index" in message
    assert "data.path" in message and "ml-100k.zip" in message  # what the user can do
    assert cache_files(cache) == []  # no partial archive, no temporary file


def test_corrupted_cached_archive_is_replaced(tmp_path, grouplens):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-100k.zip").write_bytes(grouplens.read_bytes()[:100])  # a truncated download
    data = load_movielens("ml-100k", cache)
    assert data.source.startswith("GroupLens")
    assert (cache / "ml-100k.zip").read_bytes() == grouplens.read_bytes()


def write_layout(folder: Path, layout: str, frame: pd.DataFrame) -> Path:
    """Write ``frame`` (user, item, rating, timestamp) as the ratings file ``layout``."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "u.data":
        frame.to_csv(folder / layout, sep="\t", header=False, index=False)
    elif layout == "ratings.dat":
        lines = [f"{r.user}::{r.item}::{r.rating}::{r.timestamp}" for r in frame.itertuples()]
        (folder / layout).write_text("\n".join(lines) + "\n")
    else:
        columns = {"user": "userId", "item": "movieId"}
        frame.rename(columns=columns).to_csv(folder / layout, index=False)
    return folder / layout


@pytest.mark.parametrize("layout", ["u.data", "ratings.dat", "ratings.csv"])
@pytest.mark.parametrize("variant", ["ml-100k", None])
def test_data_path_reads_common_layouts(tmp_path, layout, variant, offline):
    folder = tmp_path / "local"
    write_layout(folder, layout, RATINGS)
    for path in (folder, folder / layout):
        data = load_movielens(variant, tmp_path / "cache", path=path)
        assert data.ratings[["user", "item"]].equals(RATINGS[["user", "item"]])
        assert data.ratings.rating.tolist() == RATINGS.rating.astype(float).tolist()


def test_unknown_variant_and_missing_path_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="data.variant=ml-5k is not valid: use one of ml-100k"):
        load_movielens("ml-5k", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_movielens("ml-100k", tmp_path, path=tmp_path / "nope")


# --------------------------------------------------------------------------- one's own data

# RATINGS half a star lower (0.5 to 4.5): half stars, as in the ratings.csv releases.
HALF_STARS = RATINGS.assign(rating=RATINGS.rating - 0.5)


def test_default_run_reads_ml_100k(tmp_path, grouplens, caplog):
    caplog.set_level("INFO")
    data = load_movielens(cache_dir=tmp_path / "cache")  # neither a variant nor a path
    assert data.source == f"GroupLens {grouplens.as_uri()}"
    assert "Loaded ml-100k: 100 ratings" in caplog.text


@pytest.mark.parametrize("layout", ["ratings.csv", "ratings.dat"])
def test_own_half_star_file_loads_with_no_variant_named(tmp_path, layout, offline):
    path = write_layout(tmp_path / "mine", layout, HALF_STARS)
    data = load_movielens(cache_dir=tmp_path / "cache", path=path)
    assert data.ratings.rating.tolist() == HALF_STARS.rating.tolist()
    assert data.ratings.rating.min() == 0.5 and data.source == f"data.path {path}"


@pytest.mark.parametrize(
    "layout, variant", [("ratings.csv", "ml-100k"), ("ratings.dat", "ml-1m"), ("u.data", None)]
)
def test_half_stars_off_the_named_or_layout_scale_are_refused(tmp_path, layout, variant):
    path = write_layout(tmp_path / "mine", layout, HALF_STARS)
    line = 1 + (layout == "ratings.csv") + int(HALF_STARS.rating.to_numpy().argmin())
    origin = variant or f"{layout} layout"
    with pytest.raises(DataError) as error:
        load_movielens(variant, tmp_path / "cache", path=path)
    assert (
        f"{path}, line {line}: rating 0.5 is outside the {origin} scale 1-5. "
        "Fix: set data.variant to the release the file comes from" in str(error.value)
    )


def test_named_variant_on_the_file_scale_reads_it(tmp_path):
    path = write_layout(tmp_path / "mine", "u.data", HALF_STARS)  # u.data alone would be 1-5
    data = load_movielens("ml-10m", tmp_path / "cache", path=path)
    assert data.ratings.rating.min() == 0.5


def test_own_half_star_ratings_csv_trains_with_no_other_setting(run_cli, tmp_path):
    path = write_layout(tmp_path / "mine", "ratings.csv", HALF_STARS)
    status, text = run_cli(
        f"data.path={path}",
        "trainer.max_epochs=1",
        "model.compile=false",
        "callbacks.progress_bar.refresh_rate=0",
    )
    assert status == 0, text[-3000:]
    assert list(tmp_path.rglob("checkpoints/*.ckpt"))
