"""Hardening of the manifest parsers (issue 7): hostile paths, arbitrary CSV bytes, non-UTF-8 / empty text and
duplicate rows in label manifests, pair manifests and webdataset shards.

Hypothesis examples per run: 400 (safe_join paths) + 200 (path pieces joined) + 200 × 2 (arbitrary CSV bytes into
read_label_manifest / read_pairs) + 150 (structured rows with bad cells) = 1150.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arf.data.formats import ManifestError, read_label_manifest, read_pairs, safe_join
from arf.errors import ArfError
from arf.images import TooManyBadInputs

CLASSES = ["cat", "dog"]
def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# Pieces that make hostile paths likely: traversal, absolute roots, NUL, surrogates, home, Windows separators.
PIECES = st.sampled_from(["..", ".", "", "/", "//", "a", "b.png", "~", "\x00", "\udcff", "\\..\\", "..\\x", "é"])


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@fast(400)
@given(rel=st.text(max_size=40))
def test_safe_join_arbitrary_text_never_escapes_the_root(rel: str) -> None:
    root = Path(tempfile.gettempdir()).resolve() / "arf-hardening-root"
    try:
        full = safe_join(root, rel, "manifest m row 1")
    except ManifestError as e:
        assert "manifest m row 1" in str(e)
        return
    assert _inside(full, root.resolve()), (rel, full)


@fast(200)
@given(parts=st.lists(PIECES, min_size=1, max_size=8), absolute=st.booleans())
def test_safe_join_hostile_pieces_never_escape_the_root(parts: list[str], absolute: bool) -> None:
    root = Path(tempfile.gettempdir()).resolve() / "arf-hardening-root"
    rel = ("/" if absolute else "") + "/".join(parts)
    try:
        full = safe_join(root, rel, "w")
    except ManifestError:
        return
    assert _inside(full, root), (rel, full)


def test_nul_byte_in_a_manifest_path_is_a_manifest_error_not_value_error(tmp_path: Path) -> None:
    # Found by the fuzzer above: Path.resolve raised ValueError("embedded null byte").
    with pytest.raises(ManifestError, match=r"row 3: path 'a\\x00b' is not a usable file name"):
        safe_join(tmp_path, "a\x00b", "row 3")


@fast(200)
@given(data=st.binary(max_size=300), header=st.sampled_from([b"", b"path,label\n", b"path,text\n", b"path,caption\n"]))
def test_arbitrary_csv_bytes_raise_only_arf_errors(data: bytes, header: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        m = Path(d) / "m.csv"
        m.write_bytes(header + data)
        for read in (lambda: read_label_manifest(m, CLASSES), lambda: read_pairs(m)):
            try:
                out = read()
            except ArfError:
                continue
            paths = out[0] if isinstance(out, tuple) else [p.path for p in out]
            assert all(_inside(Path(d, p).resolve(), Path(d).resolve()) for p in paths)


CELLS = st.one_of(
    st.sampled_from(["a.png", "b.png", "sub/c.png", "", "   ", "../up.png", "/etc/passwd", "cat", "dog", "1"]),
    st.binary(max_size=6),
    st.text(max_size=6),
)


@fast(150)
@given(rows=st.lists(st.tuples(CELLS, CELLS), min_size=1, max_size=12))
def test_structured_rows_with_bad_cells(rows: list[tuple[object, object]]) -> None:
    """Parquet rows mixing valid names, bytes (often not UTF-8), empty cells, escapes and repeats."""
    with tempfile.TemporaryDirectory() as d:
        m = Path(d) / "m.parquet"
        as_bin = [c if isinstance(c, bytes) else str(c).encode("utf-8", "surrogatepass") for r in rows for c in r]
        pq.write_table(pa.table({"path": pa.array(as_bin[0::2], pa.binary()),
                                 "text": pa.array(as_bin[1::2], pa.binary())}), m)
        try:
            pairs = read_pairs(m, max_bad_fraction=1.0)
        except ManifestError as e:
            assert "row" in str(e)
            return
        ids = [p.id for p in pairs]
        assert len(ids) == len(set(ids))
        for p in pairs:
            assert isinstance(p.text, str) and p.text.strip() and not p.text.startswith("b'")
            assert _inside(Path(p.path), Path(d).resolve())


# ---------------------------------------------------------------------------------------------------------------
# counted, skipped, fails past the threshold


def _pairs_csv(tmp_path: Path, n_good: int, bad_lines: list[bytes]) -> Path:
    lines = [b"path,text"] + [f"img{i}.png,a photo number {i}".encode() for i in range(n_good)] + bad_lines
    m = tmp_path / "pairs.csv"
    m.write_bytes(b"\n".join(lines) + b"\n")
    return m


def test_pairs_csv_with_one_non_utf8_caption_keeps_the_other_rows_as_text(tmp_path: Path, caplog) -> None:
    # pyarrow reads the whole column as binary when one cell is not UTF-8; before the fix every caption of the
    # file became "b'...'" silently.
    m = _pairs_csv(tmp_path, 40, [b"x.png,caf\xe9 au lait"])
    pairs = read_pairs(m)
    assert len(pairs) == 40
    assert pairs[0].text == "a photo number 0" and pairs[0].path == str(tmp_path.resolve() / "img0.png")
    assert "row 41 (not UTF-8 text)" in caplog.text
    assert "40 ok, 1 skipped" in caplog.text


def test_pairs_empty_captions_and_repeated_ids_are_counted(tmp_path: Path, caplog) -> None:
    m = _pairs_csv(tmp_path, 40, [b"e.png,", b"img3.png,a repeat of row 4"])
    pairs = read_pairs(m)
    assert [p.id for p in pairs] == [f"img{i}.png" for i in range(40)]
    assert pairs[3].text == "a photo number 3"  # the first row of an id wins
    assert "row 41 (empty text)" in caplog.text and "row 42 (repeats id img3.png)" in caplog.text


def test_pairs_fail_past_max_bad_fraction_naming_rows(tmp_path: Path) -> None:
    m = _pairs_csv(tmp_path, 10, [b"x%d.png,\xff\xfe" % i for i in range(3)])
    msg = r"manifest .*pairs.csv: \d+ of .* inputs are bad .* first: row 11: not UTF-8 text"
    with pytest.raises(TooManyBadInputs, match=msg):
        read_pairs(m)
    assert len(read_pairs(m, max_bad_fraction=0.25)) == 10


def test_label_manifest_duplicates_empty_and_non_utf8_rows(tmp_path: Path, caplog) -> None:
    lines = [b"path,label"] + [f"i{i}.png,{CLASSES[i % 2]}".encode() for i in range(40)]
    lines += [b"i0.png,cat", b"i1.png,cat", b",dog", b"\xff.png,cat"]
    m = tmp_path / "m.csv"
    m.write_bytes(b"\n".join(lines) + b"\n")
    paths, labels = read_label_manifest(m, CLASSES, max_bad_fraction=0.1)
    assert paths == [f"i{i}.png" for i in range(40)] and labels == [i % 2 for i in range(40)]
    log = caplog.text
    assert "row 41 (repeats i0.png)" in log
    assert "row 42 (repeats i1.png with another label; the first is kept)" in log
    assert "row 43 (empty path or label)" in log and "row 44 (not UTF-8 text)" in log
    msg = r"m.csv: 3 of 43 seen \(of 44\) inputs are bad \(7.0% > max_bad_fraction=0.05\)"
    with pytest.raises(TooManyBadInputs, match=msg):
        read_label_manifest(m, CLASSES)


def test_label_manifest_escape_still_fails_hard_among_bad_rows(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_bytes(b"path,label\n\xff,cat\n../../etc/passwd,cat\n")
    with pytest.raises(ManifestError, match=r"row 2: path '../../etc/passwd' escapes"):
        read_label_manifest(m, CLASSES, max_bad_fraction=1.0)


def _shard(path: Path, samples: list[tuple[str, bytes]]) -> Path:
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4), (9, 9, 9)).save(png, format="PNG")
    with tarfile.open(path, "w") as tar:
        for key, txt in samples:
            for ext, data in (("png", png.getvalue()), ("txt", txt)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_shard_captions_non_utf8_and_empty_are_counted(tmp_path: Path, caplog) -> None:
    good = [(f"{i:04d}", f"caption {i}".encode()) for i in range(40)]
    shard = _shard(tmp_path / "s.tar", [*good, ("9998", b"\xff\xfe bad"), ("9999", b"  ")])
    pairs = read_pairs(shard)
    assert [p.text for p in pairs] == [f"caption {i}" for i in range(40)]
    assert "s.tar/9998 (caption is not UTF-8 text)" in caplog.text and "s.tar/9999 (empty caption)" in caplog.text
    with pytest.raises(TooManyBadInputs, match=r"webdataset shards .*: 2 of 42 inputs are bad"):
        read_pairs(shard, max_bad_fraction=0.01)
