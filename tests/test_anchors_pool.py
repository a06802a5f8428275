"""Pool embedding: sharded outputs, corrupt images, resume after interruption, splitting, webdataset, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from arf.anchors.config import PoolConfig
from arf.anchors.encode import encode_pils, encode_texts
from arf.anchors.pool import _Interrupted, embed_pool, load_embeddings, open_pool_image
from arf.images import open_image
from kill_fixtures import sigkill_when
from test_anchors_common import make_image, make_pool, tiny_bundle


def _cfg(src: Path, out: Path, **kw: object) -> PoolConfig:
    return PoolConfig(source=str(src), out=str(out), shard_size=7, batch_size=3, progress=False,
                      max_bad_fraction=0.2, **kw)  # type: ignore[arg-type]


def _read_all(out: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    img, meta = load_embeddings(out, "image")
    txt, _ = load_embeddings(out, "text")
    return img, txt, meta.to_pylist()


def test_embed_shards_match_the_bare_towers_and_skip_corrupt_images(tmp_path: Path) -> None:
    src = make_pool(tmp_path / "pool", n_per_class=5, corrupt=2)   # 20 good + 2 corrupt = 22 pairs -> 4 shards
    bundle = tiny_bundle()
    res = embed_pool(_cfg(src, tmp_path / "emb"), bundle)
    out = tmp_path / "emb"
    assert res.complete and res.shards_total == 4 and res.pairs == 20 and res.skipped == 2
    for i in range(4):
        for sub, name in (("img_emb", "img_emb"), ("text_emb", "text_emb"), ("metadata", "metadata"),
                          ("done", "shard")):
            assert list((out / sub).glob(f"{name}_{i:05d}.*")), (sub, i)
    info = json.loads((out / "embed_info.json").read_text())
    assert info["n_embedded"] == 20 and info["n_skipped"] == 2 and info["n_shards"] == 4
    img, txt, meta = _read_all(out)
    assert img.shape == txt.shape == (20, img.shape[1]) and len(meta) == 20
    assert not any("broken" in m["text"] for m in meta)
    # Same numbers as running the towers directly (up to float16 storage).
    pils = [open_image(m["path"]) for m in meta[:5]]
    assert np.allclose(img[:5], encode_pils(bundle, pils), atol=2e-3)
    assert np.allclose(txt[:5], encode_texts(bundle, [m["text"] for m in meta[:5]]), atol=2e-3)
    import hashlib
    assert meta[0]["sha256"] == hashlib.sha256(Path(meta[0]["path"]).read_bytes()).hexdigest()


def test_text_embeddings_of_a_padding_masking_tower_equal_full_context_ones(tmp_path: Path) -> None:
    # The pool trims all-padding token columns before the text tower; exact only because HF towers mask padding.
    import torch

    from train_fixtures import hf_text_bundle

    src = make_pool(tmp_path / "pool", n_per_class=2)
    bundle = hf_text_bundle(tmp_path / "hf")
    embed_pool(_cfg(src, tmp_path / "emb"), bundle)
    _, txt, meta = _read_all(tmp_path / "emb")
    tokens = bundle.tokenizer([m["text"] for m in meta])
    assert (tokens == 0).all(dim=0).any()  # the full context does hold padding-only columns
    bundle.model.eval()
    with torch.inference_mode():
        full = bundle.model.encode_text(tokens, normalize=True).float().numpy()
    assert np.allclose(txt, full, atol=2e-3)  # float16 storage


def test_resume_after_interruption_equals_uninterrupted(tmp_path: Path) -> None:
    src = make_pool(tmp_path / "pool", n_per_class=6, corrupt=1)
    bundle = tiny_bundle()
    embed_pool(_cfg(src, tmp_path / "ref"), bundle)
    with pytest.raises(_Interrupted):
        embed_pool(_cfg(src, tmp_path / "run"), bundle, stop_after_shards=2)
    assert len(list((tmp_path / "run" / "done").glob("*.json"))) == 2
    assert not (tmp_path / "run" / "embed_info.json").exists()
    res = embed_pool(_cfg(src, tmp_path / "run"), bundle)
    assert res.complete and res.shards_done == res.shards_total - 2
    a, b = _read_all(tmp_path / "ref"), _read_all(tmp_path / "run")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert embed_pool(_cfg(src, tmp_path / "run"), bundle).shards_done == 0   # nothing left to do


def test_split_across_processes_equals_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_pool(tmp_path / "pool", n_per_class=5)
    bundle = tiny_bundle()
    embed_pool(_cfg(src, tmp_path / "ref"), bundle)
    first = embed_pool(_cfg(src, tmp_path / "split", shard="0/2"), bundle)
    assert not first.complete and first.shards_done == 2
    monkeypatch.setenv("RANK", "1")          # torchrun's environment picks the other half
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = embed_pool(_cfg(src, tmp_path / "split"), bundle)
    assert second.complete and second.shards_done == 1
    a, b = _read_all(tmp_path / "ref"), _read_all(tmp_path / "split")
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_webdataset_shards_and_dataloader_workers(tmp_path: Path) -> None:
    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tf:
            for i in range(4):
                key = f"{s:05d}{i:04d}"
                png = make_image(tmp_path / "tmp.png", ["red", "blue"][i % 2], i).read_bytes()
                if s == 1 and i == 3:
                    png = b"corrupt"
                for ext, data in (("jpg", png), ("txt", f"item {s} {i}".encode())):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    res = embed_pool(_cfg(shards, tmp_path / "emb", num_workers=2, dtype="float32"), tiny_bundle())
    assert res.complete and res.pairs == 7 and res.skipped == 1
    _, _, meta = _read_all(tmp_path / "emb")
    assert [m["text"] for m in meta] == [f"item {s} {i}" for s in range(2) for i in range(4)][:7]
    img = open_pool_image(meta[2]["path"])          # "<tar>#<key>" refs open like files
    assert meta[2]["path"].endswith("00000.tar#000000002") and img.size == (40, 40)


def test_other_model_or_source_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    src = make_pool(tmp_path / "pool", n_per_class=2)
    bundle = tiny_bundle()
    embed_pool(_cfg(src, tmp_path / "emb"), bundle)
    from arf.errors import ArfError

    with pytest.raises(ArfError, match="holds embeddings made with other dtype"):
        embed_pool(_cfg(src, tmp_path / "emb", dtype="float32"), bundle)
    # Same path and model id, other content: a rebuilt pool, a retrained model. Resuming would keep every shard.
    rows = pq.read_table(src).to_pylist()
    pq.write_table(pa.Table.from_pylist(rows[:-1]), src)
    with pytest.raises(ArfError, match="holds embeddings made with other source_digest"):
        embed_pool(_cfg(src, tmp_path / "emb"), bundle)
    other = tiny_bundle()
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(ArfError, match="other source_digest, weights"):
        embed_pool(_cfg(src, tmp_path / "emb"), other)
    # The demo's own folder is embedded again instead.
    res = embed_pool(_cfg(src, tmp_path / "emb"), bundle, replace_stale=True)
    assert res.complete and res.pairs == len(rows) - 1
    _, _, meta = _read_all(tmp_path / "emb")
    assert len(meta) == len(rows) - 1


def test_cli_pool_embed_and_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arf.cli import main

    src = make_pool(tmp_path / "pool", n_per_class=4)
    assert main(["pool", "embed", "--source", str(src), "--out", str(tmp_path / "emb"), "--shard-size", "5",
                 "--model", "arf:tiny-clip", "--set", "progress=false"]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["pool", "index", "--emb", str(tmp_path / "emb")]) == 0
    out = capsys.readouterr().out
    assert "image: Flat over 16" in out and "recall@16=1.000" in out
    infos = json.loads((tmp_path / "emb" / "index" / "image.infos.json").read_text())
    assert infos["kind"] == "flat" and infos["n"] == 16
    assert main(["pool", "embed", "--source", str(src), "--out", "x", "--shard-size", "0"]) == 2
    assert "shard_size" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "emb" / "metadata" / "metadata_00000.parquet").num_rows == 5


def _arf_pool_embed(src: Path, out: Path) -> subprocess.Popen:
    """The real CLI in its own process (one thread, offline), as a user would run it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "arf.cli", "pool", "embed", "--source", str(src), "--out", str(out),
         "--shard-size", "2", "--batch-size", "2", "--model", "arf:tiny-clip", "--set", "progress=false",
         "--set", "max_bad_fraction=0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _files(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` by relative path; hidden ``.<name>.*.tmp`` leftovers are never read."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_sigkill_of_the_cli_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    # 40 good + 2 corrupt pairs in shards of 2: 21 shards, ~10 ms each, so the kill lands mid-run.
    src = make_pool(tmp_path / "pool", n_per_class=10, corrupt=2)
    ref, run = tmp_path / "ref", tmp_path / "run"
    full = _arf_pool_embed(src, ref)            # the uninterrupted run, alongside
    killed = _arf_pool_embed(src, run)
    sigkill_when(killed, lambda: any((run / "done").glob("shard_*.json")), what="a finished shard")
    n_done = len(list((run / "done").glob("shard_*.json")))
    assert not (run / "embed_info.json").exists() and n_done < 21, "finished before the kill; proves nothing"

    rerun = _arf_pool_embed(src, run)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert f"pool embed: {21 - n_done} shards" in out and "complete" in out   # only the missing shards redone
    out_full, _ = full.communicate(timeout=120)
    assert full.returncode == 0, out_full

    a, b = _files(ref), _files(run)
    assert sorted(a) == sorted(b) and len(a) == 4 * 21 + 2   # 4 files per shard + embed_config + embed_info
    assert [k for k in a if a[k] != b[k]] == []
    assert json.loads(a["embed_info.json"])["n_skipped"] == 2
