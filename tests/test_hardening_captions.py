"""The ``file:`` captioner on bad input (issue 7): non-UTF-8, empty and duplicate rows, unusable files.

A bad row is a data problem: skipped, counted, named in ``captions.json``; the stage fails only past
``max_bad_fraction``. A file that cannot be read or lacks a column is one ``InputFileError`` naming it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from arf.anchors.caption import run_caption
from arf.anchors.captioners import FileCaptioner
from arf.anchors.config import CaptionConfig
from arf.anchors.sources import ImageSet, resolve_set
from arf.errors import ArfError, InputFileError
from arf.images import TooManyBadInputs
from test_anchors_common import make_folder_set


def _set(tmp: Path, per_class: int = 10) -> ImageSet:
    return resolve_set(make_folder_set(tmp / "set", per_class=per_class))   # 2 classes: 2 * per_class images


def _run(tmp: Path, images: ImageSet, caps: Path, **kw: object) -> tuple[dict[str, str], dict]:
    res = run_caption(CaptionConfig(images=images.name, captioner=f"file:{caps}", out=str(tmp / "out"),
                                    chunk_size=7, **kw), images=images)  # type: ignore[arg-type]
    t = pq.read_table(res.path)
    got = dict(zip(t.column("image_id").to_pylist(), t.column("caption").to_pylist(), strict=True))
    return got, json.loads((res.path.parent / "captions.json").read_text())


def _csv(path: Path, rows: list[tuple[bytes, bytes]], header: bytes = b"image_id,caption\n") -> Path:
    path.write_bytes(header + b"".join(k + b"," + c + b"\n" for k, c in rows))
    return path


def test_one_non_utf8_caption_is_skipped_and_the_others_stay_text(tmp_path: Path) -> None:
    images = _set(tmp_path)                                # 20 images; 1 bad = 0.05, exactly at the limit
    rows = [(i.encode(), f"a caption of {i}".encode()) for i in images.paths]
    rows[3] = (rows[3][0], b"une photo d\xe9j\xe0 vue")   # Latin-1 bytes in a UTF-8 file
    got, info = _run(tmp_path, images, _csv(tmp_path / "c.csv", rows))
    bad = images.paths[3]
    assert len(got) == 19 and bad not in got
    # pyarrow reads such a column as binary: no caption may become "b'...'" text.
    assert all(c == f"a caption of {i}" for i, c in got.items())
    assert info["n_skipped"] == 1 and "line 5: column 'caption' is not UTF-8 text" in info["skipped"][bad]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_whole_file_in_another_encoding_fails_naming_the_file(tmp_path: Path, encoding: str) -> None:
    images = _set(tmp_path, per_class=3)
    p = tmp_path / "c.csv"
    p.write_text("image_id,caption\n" + "".join(f"{i},café {i}\n" for i in images.paths), encoding=encoding)
    with pytest.raises(ArfError, match=rf"captions file {p}") as e:
        _run(tmp_path, images, p)
    if encoding == "latin-1":   # every row bad: failure is certain at the first one, which is named
        assert isinstance(e.value, TooManyBadInputs)
        assert "1 of 1 seen (of 6) inputs are bad" in str(e.value) and "line 2: column 'caption'" in str(e.value)
    assert not (tmp_path / "out" / "captions.parquet").exists()


def test_null_empty_and_whitespace_captions_are_skipped_and_counted(tmp_path: Path) -> None:
    images = _set(tmp_path, per_class=30)                  # 60 images; 3 bad = 0.05
    caps = [f"cap {i}" for i in images.paths]
    caps[0], caps[10], caps[20] = None, "", " \t\n "
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"image_id": images.paths, "caption": pa.array(caps, pa.string())}), p)
    got, info = _run(tmp_path, images, p)
    assert len(got) == 57 and info["n_skipped"] == 3
    assert [info["skipped"][images.paths[k]] for k in (0, 10, 20)] == [
        f"no usable caption in c.parquet (row {k + 1}: empty caption)" for k in (0, 10, 20)]
    # One more empty caption is past the limit: the stage stops before writing, naming file and rows.
    caps[30] = ""
    pq.write_table(pa.table({"image_id": images.paths, "caption": pa.array(caps, pa.string())}), p)
    with pytest.raises(TooManyBadInputs, match=rf"captions file {p}: 4 of 31 seen \(of 60\) inputs are bad .*"
                                               r"first: row 1: empty caption; row 11: .*row 31: empty caption"):
        _run(tmp_path / "again", images, p)


def test_duplicate_rows_same_caption_ignored_conflicting_caption_first_wins(tmp_path: Path) -> None:
    images = _set(tmp_path)                                # 20 images
    a, b = images.paths[0], images.paths[1]
    rows = [(i.encode(), f"cap {i}".encode()) for i in images.paths]
    rows.insert(5, (a.encode(), f"cap {a}".encode()))     # the same caption again: harmless, not counted
    rows.insert(9, (b.encode(), b"something else"))       # another caption: the first row is kept, counted
    got, info = _run(tmp_path, images, _csv(tmp_path / "c.csv", rows))
    assert len(got) == 20 and got[a] == f"cap {a}" and got[b] == f"cap {b}"
    assert info["n_skipped"] == 0                          # every image has its caption
    cap = FileCaptioner(tmp_path / "c.csv")
    assert cap.by_key[b] == f"cap {b}"
    # 22 rows, 1 bad (the conflict), named with the row that won:
    with pytest.raises(TooManyBadInputs, match=rf"1 of 10 seen \(of 22\) inputs are bad .*line 11: gives {b} "
                                               r"another caption than line 3, which is kept"):
        FileCaptioner(tmp_path / "c.csv", max_bad_fraction=0.0)


def test_csv_keeps_ids_as_text_and_skips_lines_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    p = _csv(tmp_path / "c.csv", [(b"001", b"zero zero one"), (b"002", b"two,\"extra\""), (b"003", b"three")]
             + [(f"{k:03d}".encode(), b"x") for k in range(4, 25)])
    cap = FileCaptioner(p)                                 # 1 of 24 lines bad < 0.05
    assert cap.by_key["001"] == "zero zero one" and "1" not in cap.by_key and "002" not in cap.by_key
    with pytest.raises(TooManyBadInputs, match=r"first: line 3: 3 fields, the header has 2"):
        FileCaptioner(p, max_bad_fraction=0.0)



def test_a_malformed_line_that_is_also_not_utf8_is_one_bad_line(tmp_path: Path) -> None:
    # (pyarrow's CSV reader cannot skip such a line: it failed the whole file.)
    p = _csv(tmp_path / "c.csv", [(b"001", b"one"), (b"\xff02", b"caf\xe9,three"), (b"003", b"three"),
                                  (b"004", b'"a caption over\ntwo lines, quoted"')])
    cap = FileCaptioner(p, max_bad_fraction=0.5)
    assert cap.by_key == {"001": "one", "003": "three", "004": "a caption over two lines, quoted"}
    with pytest.raises(TooManyBadInputs, match=r"first: line 3: 3 fields, the header has 2"):
        FileCaptioner(p, max_bad_fraction=0.0)


@pytest.mark.parametrize("damage", ["truncated", "footer", "pages", "empty", "text"])
def test_unreadable_parquet_is_one_input_error(tmp_path: Path, damage: str) -> None:
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"image_id": [f"i{k}" for k in range(500)], "caption": ["a caption"] * 500}), p)
    data = bytearray(p.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "footer":
        data[-12:-4] = b"\0" * 8
    elif damage == "pages":                                # valid footer, garbage page headers
        for k in range(8, 200):
            data[k] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"image_id,caption\nx,y\n")
    p.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=rf"^captions file {p}: cannot read \("):
        FileCaptioner(p)


@pytest.mark.parametrize("columns,missing", [
    ({"image_id": ["a"], "text": ["x"]}, "'caption'"),
    ({"file": ["a"], "caption": ["x"]}, "'image_id' or 'path'"),
])
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_missing_column_is_one_input_error_naming_it(tmp_path: Path, columns: dict, missing: str,
                                                     suffix: str) -> None:
    p = tmp_path / f"c{suffix}"
    t = pa.table(columns)
    if suffix == ".parquet":
        pq.write_table(t, p)
    else:
        import pyarrow.csv as pacsv
        pacsv.write_csv(t, p)
    with pytest.raises(InputFileError, match=rf"^captions file {p}: no {missing} column; it has "):
        FileCaptioner(p)


def test_a_corrected_file_is_not_served_the_old_captions(tmp_path: Path) -> None:
    images = _set(tmp_path, per_class=2)
    p = tmp_path / "c.csv"
    _csv(p, [(i.encode(), b"old") for i in images.paths])
    assert set(_run(tmp_path, images, p)[0].values()) == {"old"}
    _csv(p, [(i.encode(), b"new") for i in images.paths])
    assert set(_run(tmp_path, images, p)[0].values()) == {"new"}


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


# Half raw bytes, half CSV-like rows: 1-3 cells each (so field counts are often right and sometimes wrong) of
# pieces that make blanks, quotes, repeats and bad bytes likely.
CELL_BYTES = st.lists(st.sampled_from([b"a", b"b.png", b"a caption", b" ", b"\t", b'"', b"\xff", b"\xe9", b"\x00",
                                       "é".encode(), b"\n"]), max_size=4).map(b"".join)
CSV_ROWS = st.lists(st.lists(CELL_BYTES, min_size=1, max_size=3).map(b",".join), max_size=12).map(b"\n".join)


@fast(200)
@given(data=st.one_of(st.binary(max_size=300), CSV_ROWS),
       header=st.sampled_from([b"", b"image_id,caption\n", b"path,caption\n", b"image_id,path,caption\n"]))
def test_arbitrary_csv_bytes_raise_only_arf_errors(data: bytes, header: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.csv"
        p.write_bytes(header + data)
        try:
            cap = FileCaptioner(p, max_bad_fraction=1.0)
        except ArfError as e:
            event(f"refused: {type(e).__name__}")
            return
        event("loaded with captions" if cap.by_key else "loaded, no usable row")
        assert all(isinstance(c, str) and c == " ".join(c.split()) and c for c in cap.by_key.values())


CELLS = st.one_of(st.none(), st.sampled_from(["", " ", "\t", "a", "b", "img/1.png", "a caption", "é"]),
                  st.binary(max_size=6), st.text(max_size=8))


@fast(150)
@given(rows=st.lists(st.tuples(CELLS, CELLS), min_size=1, max_size=12))
def test_structured_rows_keep_the_first_usable_caption(rows: list[tuple[object, object]]) -> None:
    """Parquet rows mixing nulls, blanks, bytes (often not UTF-8), text and repeated keys."""
    def as_text(v: object) -> str | None:
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return "" if v is None else str(v)

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.parquet"
        col = lambda k: pa.array([as_text(r[k]) if not isinstance(r[k], bytes) else r[k] for r in rows],  # noqa: E731
                                 pa.binary() if any(isinstance(r[k], bytes) for r in rows) else pa.string())
        pq.write_table(pa.table({"image_id": col(0), "caption": col(1)}), p)
        cap = FileCaptioner(p, max_bad_fraction=1.0)
        expected: dict[str, str] = {}
        for key, c in rows:
            k, t = as_text(key), as_text(c)
            if k and k.strip() and t and t.strip():
                expected.setdefault(k, " ".join(t.split()))
        assert cap.by_key == expected
