"""``encode_texts``: texts encoded shortest first in trimmed batches come back in order, with the same embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from arf.anchors.encode import encode_texts
from arf.models import create_model
from arf.models.text import text_pad_id
from train_fixtures import hf_text_bundle

WORDS = "a red small photo of the dog cat emoji icon drawing with big round shiny green ship".split()


def _texts(n: int = 37) -> list[str]:
    rng = np.random.default_rng(0)
    # 1 to 34 words: batches of mixed lengths, some past the 32-token context (truncated, no padding at all).
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 35)))) for _ in range(n)]


@pytest.fixture(scope="module", params=["hf-text", "arf:tiny-clip"])
def bundle(request, tmp_path_factory) -> Any:
    if request.param == "hf-text":
        return hf_text_bundle(tmp_path_factory.mktemp("hf-text"))
    return create_model(request.param)


def _record_widths(bundle: Any) -> list[int]:
    widths: list[int] = []
    original = bundle.model.encode_text

    def recording(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        widths.append(int(tokens.shape[1]))
        return original(tokens, *args, **kwargs)

    bundle.model.encode_text = recording
    return widths


def test_encode_texts_keeps_the_order_and_the_embeddings_of_full_context_batches(bundle: Any) -> None:
    texts = _texts()
    bundle.model.eval()
    with torch.no_grad():  # the reference: the texts in order, every batch padded to the whole context
        ref = torch.cat([bundle.model.encode_text(bundle.tokenizer(texts[i:i + 8]), normalize=True)
                         for i in range(0, len(texts), 8)]).numpy()
    widths = _record_widths(bundle)
    try:
        emb = encode_texts(bundle, texts, batch_size=8)
    finally:
        del bundle.model.encode_text  # back to the class method
    assert emb.shape == ref.shape and emb.dtype == np.float32
    np.testing.assert_allclose(emb, ref, rtol=0, atol=1e-5)
    context = int(bundle.tokenizer(["x"]).shape[1])
    if text_pad_id(bundle.model) is None:  # open_clip's causal tower: full context, untouched
        assert widths == [context] * len(widths)
    else:  # shortest first, each batch only as wide as its longest text
        assert widths == sorted(widths) and widths[0] < context


def test_encode_texts_of_nothing_is_empty(bundle: Any) -> None:
    assert encode_texts(bundle, []).shape == (0, 0)
