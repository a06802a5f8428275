"""Text embeddings cached on disk: the retrieval captioner encodes its corpus once per (model weights, corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from arf.anchors.caption import run_caption
from arf.anchors.captioners import RetrievalCaptioner, create_captioner
from arf.anchors.config import CaptionConfig
from arf.anchors.encode import encode_texts, encode_texts_cached, text_cache_key
from arf.anchors.sources import resolve_set
from arf.models import create_model
from test_anchors_common import make_folder_set

TEXTS = ["a red square", "a blue square", "a green circle", "photo of a yellow sun", "a small red box"]


class EncodeCounter:
    """Counts the texts that go through the model's text tower (the real one runs)."""

    def __init__(self, bundle: Any) -> None:
        self.texts = 0
        original = bundle.model.encode_text

        def counting(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.texts += int(tokens.shape[0])
            return original(tokens, *args, **kwargs)

        bundle.model.encode_text = counting


@pytest.fixture(scope="module")
def bundle() -> Any:
    torch.manual_seed(0)
    return create_model("arf:tiny-clip")


def test_second_call_reads_the_cache_and_encodes_nothing(bundle: Any, tmp_path: Path) -> None:
    counter = EncodeCounter(bundle)
    first = encode_texts_cached(bundle, TEXTS, tmp_path)
    assert counter.texts == len(TEXTS)
    files = list(tmp_path.glob("text_emb_*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))   # written atomically, no temp file left
    again = encode_texts_cached(bundle, TEXTS, tmp_path)
    assert counter.texts == len(TEXTS)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, encode_texts(bundle, TEXTS), atol=1e-6)


def test_key_follows_text_weights_and_texts_not_the_image_tower(bundle: Any) -> None:
    key = text_cache_key(bundle, TEXTS)
    assert text_cache_key(bundle, TEXTS[::-1]) != key
    assert text_cache_key(bundle, TEXTS[:-1]) != key
    other = create_model("arf:tiny-clip")
    sd = other.model.state_dict()
    with torch.no_grad():
        for name, t in bundle.model.state_dict().items():
            sd[name].copy_(t)
    assert text_cache_key(other, TEXTS) == key
    with torch.no_grad():
        visual = next(n for n in sd if n.startswith("visual.") and sd[n].is_floating_point())
        sd[visual].add_(1.0)
    assert text_cache_key(other, TEXTS) == key           # the image tower does not change text embeddings
    with torch.no_grad():
        text = next(n for n in sd if not n.startswith("visual.") and sd[n].is_floating_point() and sd[n].ndim == 2)
        sd[text].add_(0.5)
    assert text_cache_key(other, TEXTS) != key


def test_a_corrupt_cache_file_is_encoded_again(bundle: Any, tmp_path: Path) -> None:
    emb = encode_texts_cached(bundle, TEXTS, tmp_path)
    (path,) = tmp_path.glob("text_emb_*.npy")
    path.write_bytes(b"not a numpy file")
    counter = EncodeCounter(bundle)
    np.testing.assert_allclose(encode_texts_cached(bundle, TEXTS, tmp_path), emb, atol=1e-6)
    assert counter.texts == len(TEXTS)
    assert np.load(path).shape == emb.shape              # rewritten


def test_retrieval_captioner_encodes_its_corpus_once_across_runs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    images = resolve_set(make_folder_set(tmp_path / "set"))
    out = tmp_path / "captions"

    def caption(n_images: int) -> tuple[int, Any]:
        torch.manual_seed(0)   # the same tiny weights in every run, like a cached base model
        cfg = CaptionConfig(images="set", captioner=f"retrieval:{corpus}", model="arf:tiny-clip", out=str(out),
                            chunk_size=4)
        cap = create_captioner(cfg.captioner, cfg)
        assert isinstance(cap, RetrievalCaptioner)
        counter = EncodeCounter(cap.bundle)
        subset = type(images)(images.name, images.root, images.paths[:n_images], images.classnames)
        res = run_caption(cfg, captioner=cap, images=subset)
        return counter.texts, res

    encoded, res = caption(4)
    assert encoded == len(TEXTS) and res.n_captions == 4
    assert len(list((out / "corpus_emb").glob("text_emb_*.npy"))) == 1
    # A new image list re-captions, but the corpus embeddings come from disk.
    encoded, res = caption(6)
    assert encoded == 0 and res.n_captions == 6
    # Captions already up to date: the corpus is not even read from disk.
    torch.manual_seed(0)
    cfg = CaptionConfig(images="set", captioner=f"retrieval:{corpus}", model="arf:tiny-clip", out=str(out),
                        chunk_size=4)
    cap = create_captioner(cfg.captioner, cfg)
    assert isinstance(cap, RetrievalCaptioner)
    subset = type(images)(images.name, images.root, images.paths[:6], images.classnames)
    assert run_caption(cfg, captioner=cap, images=subset).n_captions == 6
    assert cap._text_emb is None
