"""Caption anchors: every captioner, the resumable `arf caption` stage (kill -9 and injected failures), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arf.anchors.caption import run_caption, show_captions
from arf.anchors.captioners import CAPTIONERS, RetrievalCaptioner, create_captioner, read_corpus
from arf.anchors.config import CaptionConfig
from arf.anchors.sources import resolve_set
from arf.cli import main
from arf.errors import InputFileError
from arf.images import TooManyBadInputs
from test_anchors_common import make_folder_set

CORPUS = ["a red square on white", "a blue square", "a small red box", "a green circle", "a red square",
          "photo of a yellow sun"]


def _tiny_blip(tmp: Path) -> Path:
    """A randomly initialised BLIP captioner (32 px, 1 layer) saved like a hub checkpoint; no network."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a picture of photo dog cat red blue the on with".split()]
    (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                         tokenizer=BertTokenizer(str(tmp / "vocab.txt")))
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    cfg = BlipConfig(text_config={**small, "vocab_size": len(words), "max_position_embeddings": 64, "bos_token_id": 2,
                                  "sep_token_id": 3, "pad_token_id": 0},
                     vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=32)
    out = tmp / "tiny-blip"
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _corpus_file(tmp: Path) -> Path:
    p = tmp / "alignment.parquet"
    pq.write_table(pa.table({"path": [f"x{i}.png" for i in range(len(CORPUS) + 1)],
                             "text": [*CORPUS, "a blue square"]}), p)  # one duplicate, removed by read_corpus
    return p


def _retrieval(tmp: Path) -> RetrievalCaptioner:
    corpus = _corpus_file(tmp)
    cap = create_captioner(f"retrieval:{corpus}", CaptionConfig(images="x", model="arf:tiny-clip"))
    assert isinstance(cap, RetrievalCaptioner) and cap.corpus == CORPUS   # duplicate removed, order kept
    return cap


def _make(name: str, tmp: Path, images: Any) -> Any:
    if name == "hf":
        return create_captioner(f"hf:{_tiny_blip(tmp)}", CaptionConfig(images="x", prompt="a picture of",
                                                                          max_new_tokens=5))
    if name == "retrieval":
        return _retrieval(tmp)
    if name == "file":
        p = tmp / "mine.csv"
        p.write_text("image_id,caption\n" + "".join(f"{i},my caption of {i}\n" for i in images.paths))
        return create_captioner(f"file:{p}")
    raise AssertionError(f"no test builder for captioner {name}")


@pytest.mark.parametrize("name", CAPTIONERS.names())
def test_every_captioner_captions_every_image(name: str, tmp_path: Path) -> None:
    images = resolve_set(make_folder_set(tmp_path / "set", per_class=2))
    cap = _make(name, tmp_path, images)
    res = run_caption(CaptionConfig(images=images.name, out=str(tmp_path / "out"), chunk_size=3, batch_size=2),
                      captioner=cap, images=images)
    t = pq.read_table(res.path)
    assert t.column_names == ["image_id", "path", "caption", "captioner"]
    assert sorted(t.column("image_id").to_pylist()) == sorted(images.paths)
    assert all(isinstance(c, str) and c.strip() for c in t.column("caption").to_pylist())
    assert set(t.column("captioner").to_pylist()) == {cap.id}
    assert all(Path(p).is_file() for p in t.column("path").to_pylist())
    if name == "hf":  # the prompt is stripped from generated text
        assert not any(c.startswith("a picture of") for c in t.column("caption").to_pylist())
    if name == "retrieval":  # each caption starts with a corpus text and only adds words from the corpus
        vocab = {w.strip(",.").lower() for text in CORPUS for w in text.split()}
        for c in t.column("caption").to_pylist():
            assert any(c.startswith(x) for x in CORPUS)
            assert {w.strip(",.").lower() for w in c.split()} <= vocab
    assert res.n_captions == len(images.paths) and res.images_per_s > 0


def test_retrieval_selection_respects_margin_and_top_m(tmp_path: Path) -> None:
    cap = _retrieval(tmp_path)
    cap.text_emb = np.eye(len(cap.corpus), dtype=np.float32)   # text j = axis j: similarities are set by hand
    img = np.zeros((2, len(cap.corpus)), np.float32)
    img[0, [0, 4, 2, 3]] = [0.90, 0.88, 0.86, 0.50]    # 0, 4, 2 within margin 0.05; 3 is not
    img[1, [1, 0]] = [0.9, 0.1]
    cap.margin, cap.top_m = 0.05, 3
    assert cap.select(img) == [[0, 4, 2], [1]]
    cap.top_m = 2
    assert cap.select(img)[0] == [0, 4]


def test_read_corpus_refuses_a_labelled_set(tmp_path: Path) -> None:
    p = tmp_path / "test_set.parquet"
    pq.write_table(pa.table({"path": ["a.png"], "label": [0], "classname": ["dog"]}), p)
    with pytest.raises(InputFileError, match="needs a text column \\(text or caption or title\\)"):
        read_corpus(p)


def test_read_corpus_takes_open_clips_title_column_and_names_a_malformed_file(tmp_path: Path) -> None:
    p = tmp_path / "train.tsv"
    p.write_text("filepath\ttitle\na.png\ta red  square\nb.png\tA red square\nc.png\t001\n")
    assert read_corpus(p) == ["a red square", "001"]  # case-folded repeat dropped; "001" kept as text
    bad = tmp_path / "bad.csv"
    bad.write_text("text,source\na,b,c\n")  # three cells under a two-column header
    with pytest.raises(InputFileError, match=r"manifest .*bad\.csv: cannot read"):
        read_corpus(bad)


def test_file_captioner_lists_missing_images(tmp_path: Path) -> None:
    images = resolve_set(make_folder_set(tmp_path / "set", per_class=3))
    p = tmp_path / "caps.parquet"
    pq.write_table(pa.table({"image_id": images.paths[:2], "caption": ["x", "y"]}), p)
    with pytest.raises(TooManyBadInputs, match=r"no usable caption for 4 of 6 images .*e\.g\. blue/blue_2.png \("):
        run_caption(CaptionConfig(images="s", captioner=f"file:{p}", out=str(tmp_path / "o")), images=images)


def test_bad_images_are_skipped_and_counted(tmp_path: Path) -> None:
    root = make_folder_set(tmp_path / "set", per_class=10)
    (root / "red" / "red_broken.png").write_bytes(b"not a png")
    images = resolve_set(root)
    cap = _retrieval(tmp_path)
    res = run_caption(CaptionConfig(images="s", out=str(tmp_path / "o"), chunk_size=4), captioner=cap, images=images)
    assert res.n_captions == 20 and res.n_skipped == 1
    info = __import__("json").loads((tmp_path / "o" / "captions.json").read_text())
    assert list(info["skipped"]) == ["red/red_broken.png"]


class _Boom(RuntimeError):
    pass


def test_resume_after_injected_failure_equals_uninterrupted_run(tmp_path: Path) -> None:
    images = resolve_set(make_folder_set(tmp_path / "set", per_class=7))
    cap = _retrieval(tmp_path)
    ref = run_caption(CaptionConfig(images="s", out=str(tmp_path / "ref"), chunk_size=3), captioner=cap,
                      images=images)
    calls: list[int] = []

    def fail_after_two(c: int) -> None:
        calls.append(c)
        if len(calls) == 2:
            raise _Boom

    cfg = CaptionConfig(images="s", out=str(tmp_path / "run"), chunk_size=3)
    with pytest.raises(_Boom):
        run_caption(cfg, captioner=cap, images=images, on_chunk=fail_after_two)
    assert not (tmp_path / "run" / "captions.parquet").exists()
    redone: list[int] = []
    res = run_caption(cfg, captioner=cap, images=images, on_chunk=redone.append)
    assert redone == [2, 3, 4]                          # chunks 0 and 1 were kept, nothing redone twice
    assert pq.read_table(res.path).equals(pq.read_table(ref.path))
    assert res.path.read_bytes() == ref.path.read_bytes()
    again: list[int] = []
    run_caption(cfg, captioner=cap, images=images, on_chunk=again.append)
    assert again == []                                  # up to date: nothing recomputed


def test_kill_9_midway_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    images = resolve_set(make_folder_set(tmp_path / "set", per_class=5))
    caps = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"image_id": images.paths, "caption": [f"cap {p}" for p in images.paths]}), caps)
    script = textwrap.dedent(f"""
        import os, signal
        from arf.anchors.caption import run_caption
        from arf.anchors.config import CaptionConfig
        def kill(c):
            if c == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        run_caption(CaptionConfig(images={str(images.root)!r}, captioner={'file:' + str(caps)!r},
                                  out={str(tmp_path / 'run')!r}, chunk_size=2), on_chunk=kill)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env={**os.environ})
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    parts = list((tmp_path / "run" / ".parts").rglob("part_*.parquet"))
    assert len(parts) == 2 and not (tmp_path / "run" / "captions.parquet").exists()
    cfg = CaptionConfig(images=str(images.root), captioner=f"file:{caps}", out=str(tmp_path / "run"), chunk_size=2)
    redone: list[int] = []
    res = run_caption(cfg, on_chunk=redone.append)
    assert redone == [2, 3, 4]
    ref = run_caption(CaptionConfig(images=str(images.root), captioner=f"file:{caps}", out=str(tmp_path / "ref"),
                                    chunk_size=2))
    got = pq.read_table(res.path)
    assert got.equals(pq.read_table(ref.path))
    assert got.column("image_id").to_pylist() == sorted(images.paths)   # every image once, in order


def test_cli_caption_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder_set(tmp_path / "set", per_class=2)
    caps = tmp_path / "mine.csv"
    files = sorted(root.rglob("*.png"))
    caps.write_text("path,caption\n" + "".join(f"{p},a drawing of {p.parent.name}\n" for p in files))
    rc = main(["caption", "--images", str(root), "--captioner", f"file:{caps}", "--out", str(tmp_path / "o"),
               "--show", "3", "--set", "chunk_size=2"])
    out = capsys.readouterr().out
    assert rc == 0 and "4 images" in out and "a drawing of blue" in out
    assert len(show_captions(tmp_path / "o", 10)) == 4
    assert main(["caption", "--images", str(root), "--captioner", "bogus"]) == 2
    assert "unknown captioner 'bogus'" in capsys.readouterr().err


def test_image_load_uses_safe_decoder(tmp_path: Path) -> None:
    # An RGBA cut-out is captioned after compositing on white (arf.images), not rejected.
    root = tmp_path / "set"
    root.mkdir()
    Image.new("RGBA", (30, 30), (255, 0, 0, 0)).save(root / "clear.png")
    cap = _retrieval(tmp_path)
    res = run_caption(CaptionConfig(images=str(root), out=str(tmp_path / "o")), captioner=cap)
    assert res.n_captions == 1 and res.n_skipped == 0
