"""arf.data.offline: a tiny real build (determinism, cache, leak checks, suite, CLI) and checks on the full build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arf.cli import main
from arf.data import get_suite, read_pairs
from arf.data.offline import BuildConfig, build, find_leaks, is_built
from arf.data.offline.build import icons_by_name, match_caption
from arf.data.offline.sources import NPM, Emoji, IconSet
from arf.errors import InputFileError
from arf.io import read_json, sha256_file
from arf.paths import npm_dir

HAVE_SOURCES = all((npm_dir() / f).is_file() for f in NPM.values()) and all(
    Path(d).is_dir() for d in ("/usr/share/tuxpaint/stamps", "/usr/share/openclipart/svg"))
needs_sources = pytest.mark.skipif(not HAVE_SOURCES, reason="offline source packages not installed (bootstrap)")
TINY = ["--limit-emoji", "24", "--train-classes", "6", "--zeroshot-classes", "5", "--workers", "1"]


def tiny_cfg(out: Path) -> BuildConfig:
    return BuildConfig(out=str(out), limit_emoji=24, n_train_classes=6, n_zeroshot_classes=5, workers=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    if not HAVE_SOURCES:
        pytest.skip("offline source packages not installed")
    out = tmp_path_factory.mktemp("offline") / "v1"
    assert main(["data", "build", "--out", str(out), *TINY]) == 0
    return out


def test_animal_mnist_class_names_are_the_packages_own_list():
    # The names must follow the package's label order; a wrong list shifts labels and no test on shapes sees it.
    import importlib.metadata
    import re

    from arf.data.offline.sources import animal_mnist

    try:
        description = importlib.metadata.metadata("animal-mnist").get_payload() or ""
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("animal-mnist not installed")
    listed = re.search(r"including ([A-Za-z, ]+)\)", description)
    assert listed, "the package description no longer lists its classes"
    expected = sorted(w.strip().lower() for w in listed.group(1).split(","))
    x, y, names = animal_mnist()
    assert names == expected and sorted(set(y.tolist())) == list(range(len(names))) and len(x) == len(y)


def test_caption_matching_takes_the_head_noun():
    names = ["rainbow", "kangaroo", "cherries", "pear", "glass of milk", "milk", "apple", "green apple"]
    assert match_caption("A rainbow lorikeet.", names) is None
    assert match_caption("A red kangaroo. It hops.", names) == "kangaroo"
    assert match_caption("A pair of cherries.", names) == "cherries"
    assert match_caption("A glass of milk.", names) == "glass of milk"
    assert match_caption("A green apple.", names) == "green apple"
    assert match_caption("Two apples with leaves.", names) == "apple"


@needs_sources
def test_tiny_build_layout_roles_and_counts(tiny):
    meta = read_json(tiny / "manifest.json")
    roles = {n: s["role"] for n, s in meta["sets"].items()}
    assert roles["train"] == "train" and roles["val"] == "val" and roles["id"] == "id"
    assert {n for n, r in roles.items() if r == "shift"} == {"shift-3d", "shift-lineart", "shift-photo"}
    assert {"zs-emoji", "zs-flags", "zs-mnist", "zs-fashion", "zs-animals"} <= set(roles)
    train = pq.read_table(tiny / "train.parquet").to_pydict()
    assert set(train) == {"path", "label", "classname", "family", "sha256"}
    assert meta["sets"]["train"]["count"] == len(train["path"]) == 6 * 8
    names = read_json(tiny / "classnames" / "train.json")
    assert [names[y] for y in train["label"]] == train["classname"]
    for name in ("alignment", "pool"):
        t = pq.read_table(tiny / f"{name}.parquet").to_pydict()
        assert set(t) == {"path", "text", "family", "sha256"} and all(t["text"])
    # Every recorded checksum matches its file, and every path is relative to the root.
    for rel, sha in list(meta["files"].items())[:200]:
        assert not Path(rel).is_absolute() and sha256_file(tiny / rel) == sha
    assert meta["sources"]["flag-icons"]["license"] == "MIT"
    assert meta["sources"]["fonts-symbola"]["version"] not in ("", "?")  # Debian packages are recorded too


@needs_sources
def test_shift_photo_is_scored_over_the_train_classes_it_holds(tiny):
    # ImageNet-R / -A's convention: a shift set holding some of the train classes is scored over those only.
    from arf.evaluate.runner import label_groups
    from arf.evaluate.zeroshot import Head

    spec = read_json(tiny / "manifest.json")["sets"]["shift-photo"]
    train = read_json(tiny / "classnames" / "train.json")
    own = read_json(tiny / "classnames" / "shift-photo.json")
    mask = spec["class_mask"]
    assert spec["classnames"] == "classnames/shift-photo.json" and spec["n_classes"] == len(own) == len(mask)
    assert own and mask == sorted(mask) and [train[c] for c in mask] == own
    rows = pq.read_table(tiny / "shift-photo.parquet").to_pydict()
    assert [own[y] for y in rows["label"]] == rows["classname"] and set(rows["label"]) == set(range(len(own)))
    ds = next(s for s in get_suite("offline", root=tiny).sets if s.name == "shift-photo")
    assert ds.class_mask == mask and ds.classnames == own
    # A 300-way-style head over the train classes: each set class reads its own train column.
    logits = np.arange(len(train), dtype=np.float32)[None].repeat(2, 0)
    assert ds.to_set_logits(logits)[0].tolist() == [float(c) for c in mask]
    import torch

    head = Head(torch.zeros(len(train), 4), torch.zeros(len(train)), list(train), "trained", "offline-train")
    assert label_groups(ds, head) == (True, [[c] for c in mask])


@needs_sources
def test_tiny_build_is_leak_free_and_concepts_are_in_alignment(tiny):
    assert find_leaks(tiny) == []
    texts = " | ".join(pq.read_table(tiny / "alignment.parquet", columns=["text"]).column("text").to_pylist())
    for key in ("train", "zs-emoji"):
        for name in read_json(tiny / "classnames" / f"{key}.json"):
            assert name in texts, f"concept {name!r} of {key} is missing from the alignment corpus"
    fams = set(pq.read_table(tiny / "alignment.parquet", columns=["family"]).column("family").to_pylist())
    assert fams.isdisjoint({"fluent", "emojione", "openmoji", "flag-icons", "tuxpaint-photo", "mnist"})
    assert {"circle-flags", "flagpack", "symbola"} <= fams


@needs_sources
def test_alignment_holds_black_and_white_glyphs_of_the_train_classes(tiny):
    # Line art is a domain shift only if the base has seen monochrome pictograms of the concepts (issue 3 (a)).
    rows = pq.read_table(tiny / "alignment.parquet").to_pylist()
    glyphs = [r for r in rows if r["family"] == "symbola"]
    assert glyphs and all(r["path"].startswith("images/alignment/symbola/") for r in glyphs)
    texts = " | ".join(r["text"] for r in glyphs)
    train = read_json(tiny / "classnames" / "train.json")
    assert sum(name in texts for name in train) >= len(train) // 2  # Symbola covers every finetuning class here
    with Image.open(tiny / glyphs[0]["path"]) as im:
        grey = np.asarray(im.convert("L"))
    assert grey.min() < 64 and np.median(grey) > 200  # dark strokes on a white ground


@needs_sources
def test_alignment_shows_every_zero_shot_country_in_other_flag_designs(tiny):
    # zs-flags is a zero-shot set only if the base has seen the countries' flags, in designs other than the test's.
    rows = pq.read_table(tiny / "alignment.parquet").to_pylist()
    countries = read_json(tiny / "classnames" / "zs-flags.json")
    for fam in ("circle-flags", "flagpack"):
        flags = [r for r in rows if r["family"] == fam]
        assert all(r["path"].startswith(f"images/alignment/{fam}/") and r["text"].endswith(".") for r in flags)
        named = {c for c in countries for r in flags if r["text"].endswith(f" of {c}.")}
        assert len(named) >= len(countries) - 1  # a design may lack one tested country
    assert find_leaks(tiny) == []  # flag-icons, the test design, stays out of the alignment corpus


@needs_sources
def test_pool_shows_countries_in_its_own_emoji_design(tiny):
    # The pool stands in for CC3M, which shows flags: OpenMoji's flag emoji (the pool's own family), never the
    # alignment's designs nor flag-icons (the test's), so retrieved anchors can name a country.
    rows = [r for r in pq.read_table(tiny / "pool.parquet").to_pylist() if "/openmoji-flags/" in r["path"]]
    countries = read_json(tiny / "classnames" / "zs-flags.json")
    assert rows and {r["family"] for r in rows} == {"openmoji"}
    named = {c for c in countries for r in rows if r["text"].endswith(f" of {c}.")}
    assert len(named) == len(rows) >= len(countries) - 1
    assert find_leaks(tiny) == []


def test_pool_holds_titled_openclipart_drawings_once_each(tiny):
    rows = [r for r in pq.read_table(tiny / "pool.parquet").to_pylist() if r["family"] == "openclipart"]
    assert rows and all(r["path"].startswith("images/pool/openclipart/") and r["text"].strip() for r in rows)
    assert len({r["sha256"] for r in rows}) == len(rows)
    meta = read_json(tiny / "manifest.json")
    assert "openclipart" in meta["pairs"]["pool"]["families"]
    assert meta["sources"]["openclipart-svg"]["license"].startswith("public domain")
    assert not is_built(tiny, BuildConfig(**{**tiny_cfg(tiny).__dict__, "pool_openclipart": False}))


def test_repeated_drawings_are_dropped_but_never_the_earlier_pool_rows():
    from arf.data.offline.build import Row, drop_repeated_drawings

    rows = [Row("a", family="openmoji"), Row("b", family="openmoji"), Row("c", family="openclipart"),
            Row("d", family="openclipart"), Row("e", family="openclipart")]
    sha = {"a": "1", "b": "1", "c": "1", "d": "2", "e": "2"}   # c repeats a; d and e are one drawing twice
    kept, dropped = drop_repeated_drawings(rows, sha)
    assert [r.rel for r in kept] == ["a", "b", "d"] and dropped == 2


@needs_sources
def test_build_is_cached_and_deterministic(tiny, tmp_path):
    cfg = tiny_cfg(tiny)
    assert is_built(tiny, cfg)
    before = (tiny / "manifest.json").stat().st_mtime_ns
    assert build(cfg) == tiny and (tiny / "manifest.json").stat().st_mtime_ns == before  # skipped
    other = tmp_path / "again"
    build(tiny_cfg(other))
    a, b = read_json(tiny / "manifest.json"), read_json(other / "manifest.json")
    assert a["files"] == b["files"]  # byte-identical images and tables
    # A changed file or a different config invalidates the cache.
    first = next(r for r in a["files"] if r.startswith("images/"))
    (other / first).write_bytes(b"tampered")
    assert not is_built(other, tiny_cfg(other))
    assert not is_built(tiny, BuildConfig(**{**tiny_cfg(tiny).__dict__, "seed": 1}))


def _copy(tiny: Path, dst: Path) -> Path:
    shutil.copytree(tiny, dst, ignore=shutil.ignore_patterns("images"))
    return dst


@needs_sources
def test_leak_checks_catch_shared_images_and_families(tiny, tmp_path):
    bad = _copy(tiny, tmp_path / "img-leak")
    val = pq.read_table(bad / "val.parquet").to_pydict()
    val["sha256"][0] = pq.read_table(bad / "train.parquet").column("sha256")[0].as_py()
    pq.write_table(pa.table(val), bad / "val.parquet")
    assert any("train and val share 1 images" in p for p in find_leaks(bad))

    bad = _copy(tiny, tmp_path / "family-leak")
    pool = pq.read_table(bad / "pool.parquet").to_pydict()
    pool["family"][0] = "fluent"  # a test family in the candidate pool
    pq.write_table(pa.table(pool), bad / "pool.parquet")
    leaks = find_leaks(bad)
    assert any("pool and shift-3d share design families ['fluent']" in p for p in leaks)
    assert any("pool and zs-emoji" in p for p in leaks)

    # A val split in a test set's design would let settings be chosen on that design.
    bad = _copy(tiny, tmp_path / "val-split-leak")
    unseen = pq.read_table(bad / "val-shift-unseen.parquet").to_pydict()
    unseen["family"][0] = "fluent"
    pq.write_table(pa.table(unseen), bad / "val-shift-unseen.parquet")
    leaks = find_leaks(bad)
    assert any("shift-3d and val-shift-unseen share design families ['fluent']" in p for p in leaks)
    assert not any("val-shift-unseen" in p and "fluent" not in p for p in leaks)


def test_icons_without_code_points_are_matched_by_cldr_or_unicode_name_never_ambiguously():
    def emoji(cp: str, name: str, unicode_name: str = "") -> Emoji:
        return Emoji(cp, name, "Animals & Nature", "animal", [], unicode_name)

    table = {e.cp: e for e in (
        emoji("1f346", "eggplant", "aubergine"),  # the icon carries the Unicode name only
        emoji("1f680", "rocket", "rocket"),
        emoji("1f436", "dog face", "dog face"),
        emoji("1f415", "dog", "dog"),
        emoji("1f42d", "mouse face", "mouse face"),
        emoji("2601", "cloud", "cloud"),
        emoji("aaaa", "bat", "bat"), emoji("bbbb", "baseball bat", "bat"),  # "bat" names two emoji
    )}
    icons = {slug: {"body": ""} for slug in
             ("aubergine", "rocket-2", "rocket-1", "dogface", "Dog", "cloud-1", "cloud", "bat", "mouse")}
    found = icons_by_name(IconSet("x", icons, {}, 16, 16), table)
    assert found == {"1f346": "aubergine", "1f680": "rocket-1", "1f436": "dogface", "1f415": "Dog",
                     "2601": "cloud"}  # no "bat" (ambiguous), no "mouse" (the set's mouse is not "mouse face")


@needs_sources
def test_unseen_design_val_splits_ask_the_benchmarks_classes_in_designs_no_other_split_has(tiny):
    # FxEmoji and Streamline are in no other split (not even the alignment corpus or pool); the sets are val
    # splits, so `offline` (the test protocol) leaves them out and `offline-val` holds them.
    meta = read_json(tiny / "manifest.json")
    unseen = ("val-shift-unseen", "val-zs-unseen")
    others = {f for n, s in meta["sets"].items() if n not in unseen for f in s["families"]}
    others |= {f for p in meta["pairs"].values() for f in p["families"]}
    for name, role in zip(unseen, ("val-shift", "val-zeroshot"), strict=True):
        spec = meta["sets"][name]
        assert spec["role"] == role and set(spec["families"]) <= {"fxemoji", "streamline"}
        assert not set(spec["families"]) & others
    test = get_suite("offline", root=tiny)
    assert not set(unseen) & {s.name for s in test.sets}
    val = get_suite("offline-val", root=tiny)

    # the held-out classes it holds, read through the text head, with zs-emoji's names and templates
    vz, zs = val.get("val-zs-unseen"), test.get("zs-emoji")
    zs_name = {Path(p).stem: zs.classnames[lab] for p, lab in zip(zs.paths, zs.labels, strict=True)}
    assert vz.reference is None and vz.class_mask is None and vz.templates == zs.templates
    assert len(vz) == meta["sets"]["val-zs-unseen"]["count"] > 0 and set(vz.classnames) <= set(zs.classnames)
    assert sorted(set(vz.labels)) == list(range(len(vz.classnames)))  # every class it names, it shows
    for p, lab in zip(vz.paths, vz.labels, strict=True):
        assert vz.classnames[lab] == zs_name[Path(p).stem], p

    spec = meta["sets"]["val-shift-unseen"]
    vs = val.get("val-shift-unseen")
    train = test.get("train")
    assert vs.reference == "offline-train" and vs.templates == train.templates
    # scored over the classes it holds (as shift-photo): its labels index its own list, class_mask the train space
    concept = {Path(p).stem.rsplit("_", 1)[0]: lab for p, lab in zip(train.paths, train.labels, strict=True)}
    assert len(vs) == spec["count"] > 0 and vs.classnames == [train.classnames[c] for c in vs.class_mask]
    for p, lab in zip(vs.paths, vs.labels, strict=True):  # the icon is the class's code point, by name
        assert vs.class_mask[lab] == concept[Path(p).stem], p
    assert meta["sources"]["fxemoji"]["license"] == "Apache-2.0"
    assert meta["sources"]["streamline-emojis"]["license"] == "CC-BY-4.0"


@needs_sources
def test_offline_suite_and_pairs_read_the_build(tiny, capsys):
    suite = get_suite("offline", root=tiny)
    assert [s.role for s in suite.sets][:3] == ["train", "val", "id"]
    shift = suite.get("shift-3d")
    assert shift.classnames == suite.get("train").classnames and shift.reference == "offline-train"
    meta = read_json(tiny / "manifest.json")  # evaluation caches key on the set table's hash (its images' hashes)
    assert shift.info["content_sha256"] == meta["sets"]["shift-3d"]["sha256"] == sha256_file(tiny / "shift-3d.parquet")
    assert get_suite("offline-val", root=tiny).get("val-zs-flags").info["content_sha256"] == \
        meta["pairs"]["alignment"]["sha256"]
    assert all(Path(p).is_file() for p in shift.abspaths())
    pairs = read_pairs(tiny / "alignment.parquet")
    assert pairs and Path(pairs[0].path).is_file()
    assert pairs[0].meta["family"] in ("noto", "twemoji", "typeset-digits", "symbola")
    assert main(["data", "info", "--root", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "shift-lineart" in out and "zeroshot" in out


@needs_sources
def test_zero_shot_val_asks_the_held_out_classes_on_alignment_images_only(tiny, tmp_path):
    suite = get_suite("offline-val", root=tiny)
    assert [(s.name, s.role) for s in suite.sets] == [
        ("val", "val"), ("val-shift-colour", "val-shift"), ("val-shift-glyph", "val-shift"),
        ("val-shift-unseen", "val-shift"), ("val-zs-emoji", "val-zeroshot"), ("val-zs-flags", "val-zeroshot"),
        ("val-zs-unseen", "val-zeroshot")]
    test = get_suite("offline", root=tiny)
    align = {r["path"]: r for r in pq.read_table(tiny / "alignment.parquet").to_pylist()}
    test_paths = {p for s in test.sets for p in s.paths}
    for val_set, test_name, families in (("val-zs-emoji", "zs-emoji", {"noto", "twemoji"}),
                                         ("val-zs-flags", "zs-flags", {"circle-flags", "flagpack"})):
        vs, ts = suite.get(val_set), test.get(test_name)
        assert vs.classnames == ts.classnames and vs.templates == ts.templates
        assert vs.paths and not set(vs.paths) & test_paths  # alignment images only, never a test image
        assert {align[p]["family"] for p in vs.paths} == families
        assert all(Path(p).is_file() for p in vs.abspaths())
        for fam in families:  # each class asked once per design; a flag design may lack one country
            labels = [lab for p, lab in zip(vs.paths, vs.labels, strict=True) if align[p]["family"] == fam]
            assert len(labels) == len(set(labels)) >= len(ts.classnames) - (fam == "flagpack")
    flags = suite.get("val-zs-flags")
    for p, lab in zip(flags.paths, flags.labels, strict=True):  # the label is the country the base's caption named
        assert align[p]["text"].rstrip(".").endswith(f" of {flags.classnames[lab]}"), (p, align[p]["text"])

    # A benchmark without a zero-shot set the val split takes its classes from: one error naming it.
    broken = _copy(tiny, tmp_path / "no-zs-emoji")
    meta = read_json(broken / "manifest.json")
    del meta["sets"]["zs-emoji"]
    (broken / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="no set 'zs-emoji', which val-zs-emoji takes its classes from"):
        get_suite("offline-val", root=broken)


@needs_sources
def test_shift_val_asks_the_train_classes_in_the_bases_other_designs_only(tiny):
    # The shift test sets show the finetuning classes in unseen designs; the shift val split asks the same
    # 300-way question (train's classes and templates, so a trained head reads it) on the base's own renders.
    suite = get_suite("offline-val", root=tiny)
    test = get_suite("offline", root=tiny)
    train = test.get("train")
    align = {r["path"]: r for r in pq.read_table(tiny / "alignment.parquet").to_pylist()}
    finetune_or_test = {p for s in test.sets for p in s.paths}
    concept = {Path(p).stem.rsplit("_", 1)[0]: lab for p, lab in zip(train.paths, train.labels, strict=True)}
    for name, families in (("val-shift-colour", {"noto", "twemoji"}), ("val-shift-glyph", {"symbola"})):
        vs = suite.get(name)
        assert vs.role == "val-shift" and vs.classnames == train.classnames and vs.templates == train.templates
        assert vs.paths and not set(vs.paths) & finetune_or_test  # alignment images only
        assert {align[p]["family"] for p in vs.paths} == families
        for fam in families:  # every finetuning class once per design (Symbola draws each of them here)
            labels = [lab for p, lab in zip(vs.paths, vs.labels, strict=True) if align[p]["family"] == fam]
            assert sorted(labels) == sorted(set(concept.values()))
        for p, lab in zip(vs.paths, vs.labels, strict=True):  # the render shows the concept its label names
            assert concept[Path(p).stem.rsplit("_", 1)[0]] == lab, p


@needs_sources
def test_data_info_lists_the_val_splits_in_aligned_columns(tiny, capsys):
    assert main(["data", "info", "offline-val", "--root", str(tiny)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[:2] for r in rows[1:]] == [
        ["val", "val"], ["val-shift-colour", "val-shift"], ["val-shift-glyph", "val-shift"],
        ["val-shift-unseen", "val-shift"], ["val-zs-emoji", "val-zeroshot"], ["val-zs-flags", "val-zeroshot"],
        ["val-zs-unseen", "val-zeroshot"]]
    # the image counts end in one column, however long the role ("val-zeroshot") is
    ends = {r.index(r.split()[2]) + len(r.split()[2]) for r in rows[1:]}
    assert len(ends) == 1 and rows[0].index("images") + len("images") in ends


def test_cli_rejects_bad_arguments_and_missing_benchmark(tmp_path, capsys):
    assert main(["data", "build", "--out", str(tmp_path / "x"), "--image-size", "4"]) == 2
    assert "--image-size must be at least 16" in capsys.readouterr().err
    assert main(["data", "info", "--root", str(tmp_path / "nothing")]) == 2
    assert "run `arf data build` first" in capsys.readouterr().err


@pytest.mark.integration
def test_full_benchmark_is_leak_free_and_sized():
    from arf.data import offline_root

    root = offline_root()
    if not (root / "manifest.json").is_file():
        pytest.skip("offline benchmark not built (arf data build)")
    assert find_leaks(root) == []
    meta = read_json(root / "manifest.json")
    sets = meta["sets"]
    assert sets["train"]["n_classes"] >= 200 and 1000 <= sets["train"]["count"] <= 5000
    for name, spec in sets.items():
        if spec["role"] in ("shift", "zeroshot", "id"):
            assert 50 <= spec["count"] <= 1000, name
    # The val splits beside val: every finetuning class in the base's two colour designs and as a glyph.
    sizes = {s.name: (len(s), len(set(s.labels))) for s in get_suite("offline-val", root=root)}
    n = sets["train"]["n_classes"]
    assert sizes["val-shift-colour"] == (2 * n, n) and sizes["val-shift-glyph"] == (n, n)
    # FxEmoji and Streamline icons named like 230 of the 300 classes (revision 5: 360 images, docs/DATA.md)
    unseen = sets["val-shift-unseen"]
    assert sizes["val-shift-unseen"] == (unseen["count"], unseen["n_classes"]) and unseen["n_classes"] >= 200
    zs_unseen = sets["val-zs-unseen"]  # and 93 of the 200 held-out classes (revision 6: 144 images)
    assert sizes["val-zs-unseen"] == (zs_unseen["count"], zs_unseen["n_classes"]) and zs_unseen["n_classes"] >= 80
    texts = " | ".join(pq.read_table(root / "alignment.parquet", columns=["text"]).column("text").to_pylist())
    for key in ("train", "zs-emoji", "zs-flags"):
        missing = [n for n in read_json(root / "classnames" / f"{key}.json") if n not in texts]
        assert not missing, f"{key}: concepts missing from the alignment corpus: {missing[:5]}"


def test_train_look_describes_the_rendered_sticker():
    # scripts/augment_errors.py reads each finetuning image's draw from train_look instead of re-rendering: the
    # look must be what the build renders, for every combination of posterising and mirroring.
    from arf.data.offline.render import TRAIN_BACKGROUNDS, Job, styled, train_look

    size = 64
    red = ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
           '<rect width="10" height="10" fill="#f00"/></svg>')
    seen = set()
    for seed in range(40):
        look = train_look(seed, size)
        img = np.asarray(styled(Job("x.png", "svg", red, "train", size, seed)))
        at = look.placement
        side = at.side
        assert side == max(8, round(size * at.scale)) and 0.55 <= at.scale <= 0.9 and abs(at.angle) <= 35.0
        assert at.x + side <= size and at.y + side <= size
        bg = np.array(TRAIN_BACKGROUNDS[look.background])
        if look.posterize:
            bg = bg & 0b11100000  # PIL's posterize(3): keep the top three bits
        cx = at.x + side // 2
        if look.mirror:
            img = img[:, ::-1]
        # the sticker's centre is red, and every pixel the square cannot reach is the background
        assert tuple(img[at.y + side // 2, cx]) == (255 if not look.posterize else 224, 0, 0)
        outside = np.ones((size, size), bool)
        reach = int(side * 0.72) + 2  # a rotated square's half-diagonal, plus the bicubic fringe
        c = (at.y + side // 2, cx)
        outside[max(0, c[0] - reach):c[0] + reach, max(0, c[1] - reach):c[1] + reach] = False
        assert (img[outside] == bg).all()
        seen.add((look.posterize, look.mirror))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
