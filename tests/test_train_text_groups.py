"""The text pass in groups of similar length (``length_groups``): same tokens, same features, same ARF step."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import arf.data
from arf.models.text import length_groups, text_pad_id, token_lengths
from arf.train.config import TrainConfig
from train_fixtures import hf_text_bundle, make_benchmark


@pytest.fixture(scope="module")
def hf_bundle(tmp_path_factory):
    return hf_text_bundle(tmp_path_factory.mktemp("hf-text"))


def _padded(lengths: list[int], width: int = 12, pad: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(lengths))
    t = torch.full((len(lengths), width), pad)
    for i, n in enumerate(lengths):
        t[i, :n] = torch.randint(1, 50, (n,), generator=g)
    return t


def test_length_groups_keep_every_token_and_restore_the_order():
    lengths = [3, 9, 2, 12, 5, 5, 1, 8, 3, 11]
    tokens = _padded(lengths)
    assert token_lengths(tokens, 0).tolist() == lengths
    for k in (1, 2, 3, 4):
        groups, restore = length_groups(tokens, 0, k)
        assert 1 <= len(groups) <= k
        for g in groups:  # each group trimmed to its own longest row, and nothing cut
            assert g.shape[1] == int(token_lengths(g, 0).max())
        back = torch.cat([torch.nn.functional.pad(g, (0, tokens.shape[1] - g.shape[1])) for g in groups])
        assert torch.equal(back if restore is None else back[restore], tokens)


def test_length_groups_cut_where_the_padded_tokens_are_fewest():
    rng = random.Random(0)
    for _ in range(30):
        n, k = rng.randint(2, 9), rng.randint(2, 4)
        lengths = sorted(rng.randint(1, 12) for _ in range(n))
        groups, _ = length_groups(_padded(lengths), 0, k)
        # Brute force over every way to cut the sorted rows into at most k runs.
        best = min(sum((j - i) * lengths[j - 1] for i, j in itertools.pairwise([0, *cut, n]))
                   for m in range(k) for cut in itertools.combinations(range(1, n), m))
        assert sum(g.numel() for g in groups) == best


def test_towers_that_do_not_mask_padding_keep_one_untrimmed_group():
    tokens = _padded([3, 9, 2])
    groups, restore = length_groups(tokens, None, 3)
    assert restore is None and len(groups) == 1 and groups[0] is tokens
    import arf.models

    # open_clip's own text transformer adds its full positional table and causal mask: never trimmed.
    assert text_pad_id(arf.models.create_model("arf:tiny-clip").model) is None


def test_hf_text_features_do_not_depend_on_trailing_padding(hf_bundle):
    texts = ["a cat", "a photo of a very small and fluffy red cat sitting on a mat", "dog", "an emoji of a ship."]
    tokens = hf_bundle.tokenizer(texts)
    pad = text_pad_id(hf_bundle.model)
    assert pad is not None
    model = hf_bundle.model.eval()
    with torch.no_grad():
        full = model.encode_text(tokens)
        alone = torch.cat([model.encode_text(tokens[i:i + 1, :n]) for i, n in enumerate(token_lengths(tokens, pad))])
        groups, restore = length_groups(tokens, pad, 3)
        grouped = torch.cat([model.encode_text(g) for g in groups])[restore]
    assert len(groups) > 1
    torch.testing.assert_close(alone, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(grouped, full, rtol=0, atol=1e-5)


def _arf_setup(root, bundle, max_text_groups: int):
    from arf.images import BadInputCounter
    from arf.train.data import Anchors, StepDataset, StepSampler, collate, read_anchors
    from arf.train.methods import Arf
    from train_fixtures import make_anchors

    ds = arf.data.get_suite("offline", root).get("train")
    # Lengths as in the offline benchmark: short prompts, longer captions, anchor texts mostly short with a tail.
    captions = [f"a picture of something {ds.classnames[y]}" + " that is quite round and shiny" * (i % 3)
                for i, y in enumerate(ds.labels)]
    found = read_anchors(make_anchors(root), root)
    anchors = Anchors(found.paths, [t + " seen from far away on a sunny day" * (j % 4 == 0)
                                    for j, t in enumerate(found.texts)], found.meta)
    cfg = TrainConfig(method="arf", batch_size=8, anchor_batch_size=8, lambda_cap=1.0, lambda_ret=1.0,
                      cache_features=False)
    m = Arf(cfg, bundle, ds, captions, anchors)
    m.max_text_groups = max_text_groups
    phase = m.phases(2)[0]
    m.set_trainable(phase)
    m.module.train()
    m.freeze_norm_stats()
    sampler = StepSampler(cfg, len(ds), len(anchors), 0, 1, 0, 2, lambda s: m.needs(phase))
    data = StepDataset(ds, bundle.preprocess_val, False, anchors, BadInputCounter("t"))
    return m, phase, [collate([data[k] for k in sampler.keys(s, 0)]) for s in (0, 1)]


def _arf_step(root, bundle, state, max_text_groups: int) -> tuple[dict[str, float], dict, list[int]]:
    """Losses and gradients of one ARF step, and how many rows each text forward encoded."""
    bundle.model.load_state_dict(state)
    m, phase, (batch, _) = _arf_setup(root, bundle, max_text_groups)
    rows: list[int] = []

    def record(module, args, kwargs):
        rows.extend(t.shape[0] for t in kwargs["texts"])

    hook = m.module.register_forward_pre_hook(record, with_kwargs=True)
    m.module.zero_grad(set_to_none=True)
    losses = m.losses(m.module, batch, 0, phase)
    losses["loss"].backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in m.module.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads, rows


@pytest.mark.parametrize("model", ["hf-text", "arf:tiny-clip"])
def test_arf_step_with_grouped_texts_equals_one_fused_text_pass(tmp_path, hf_bundle, model):
    import arf.models

    bundle = hf_bundle if model == "hf-text" else arf.models.create_model(model)
    root = make_benchmark(tmp_path / "b", per_class=2)
    state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    fused, g_fused, rows_fused = _arf_step(root, bundle, state, 1)
    split, g_split, rows_split = _arf_step(root, bundle, state, 3)
    assert len(rows_fused) == 1 and sum(rows_split) == rows_fused[0]
    if model == "hf-text":
        assert len(rows_split) > 1  # the texts really went through in several groups
    assert {"clip_loss", "caption_loss", "anchor_loss", "loss"} <= fused.keys()
    for k, v in fused.items():
        assert split[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert g_split.keys() == g_fused.keys()
    assert any(".visual." not in n and "logit_scale" not in n for n in g_fused)  # the text tower has gradients
    for n in g_fused:
        torch.testing.assert_close(g_split[n], g_fused[n], rtol=1e-4, atol=1e-6)


def test_grouped_text_pass_is_one_ddp_forward_per_backward(tmp_path, hf_bundle):
    """Under DDP (one gloo process) with find_unused_parameters off, the grouped pass trains step after step: a
    parameter left out of a backward would make the second forward raise."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    root = make_benchmark(tmp_path / "b", per_class=2)
    m, phase, batches = _arf_setup(root, hf_bundle, 3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DDP(m.module)
        for batch in batches:
            loss = m.losses(ddp, batch, 0, phase)["loss"]
            loss.backward()
            assert torch.isfinite(loss)
            m.module.zero_grad(set_to_none=True)
    finally:
        dist.destroy_process_group()
