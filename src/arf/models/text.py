"""Text-tower helpers shared by training, zero-shot heads and anchors: prompts without their padding columns."""

from __future__ import annotations

import bisect

import torch
from torch import nn


def text_pad_id(model: nn.Module) -> int | None:
    """The pad token id of a Hugging Face text tower (which masks padding), else None.

    Dropping all-padding columns is exact only for towers that mask padding (HF encoders with mean/CLS pooling);
    open_clip's causal text transformer needs its full context length, so it gets None.
    """
    text = getattr(model, "text", None)
    config = getattr(text, "config", None)
    pad = getattr(config, "pad_token_id", None)
    return int(pad) if pad is not None else None


def trim_padding(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Drop trailing columns that are padding in every row (prompts are far shorter than the context)."""
    if pad_id is None or tokens.ndim != 2 or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    n = int(used.max().item()) + 1 if used.numel() else 1
    return tokens[:, :n]


def token_lengths(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per row, one past its last non-padding token (at least 1): the columns :func:`trim_padding` must keep."""
    idx = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return (idx * (tokens != pad_id)).amax(dim=1).clamp(min=1)


def _cuts(lengths: list[int], max_groups: int) -> list[tuple[int, int]]:
    """Row ranges ``[i, j)`` of ascending ``lengths`` in at most ``max_groups`` runs, minimising Σ rows × longest.

    Dynamic programming over the distinct lengths (at most the context length), so it is instant for any batch; a
    tie keeps fewer groups (each is another forward).
    """
    values = sorted(set(lengths))
    ends = [bisect.bisect_right(lengths, v) for v in values]  # rows up to and including each distinct length
    starts = [0, *ends]
    d = len(values)
    inf = float("inf")
    # best[g][b]: cost of the rows of the first b distinct lengths in g groups; back[g][b]: where the last one starts.
    best = [[inf] * (d + 1) for _ in range(max_groups + 1)]
    back = [[0] * (d + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for b in range(1, d + 1):
            for a in range(b):
                cost = best[g - 1][a] + (ends[b - 1] - starts[a]) * values[b - 1]
                if cost < best[g][b]:
                    best[g][b], back[g][b] = cost, a
    g = min(range(1, max_groups + 1), key=lambda k: (best[k][d], k))
    out, b = [], d
    while g > 0:
        a = back[g][b]
        out.append((starts[a], ends[b - 1]))
        b, g = a, g - 1
    return out[::-1]


def length_groups(tokens: torch.Tensor, pad_id: int | None, max_groups: int
                  ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Rows sorted by length and cut into at most ``max_groups`` groups, each trimmed to its own longest row.

    One pass padded to the longest text of a batch (ARF's class prompts ~9 tokens, captions ~14, anchor texts
    mostly ~8 with a tail to 18+) spends a third or more of its tokens on padding; the cost of a text pass is
    close to proportional to the tokens it encodes, so groups cut where the lengths change save that (measured
    in ``benchmarks/bench_text_pass.py``). Exact for towers that mask padding (``pad_id`` not None); otherwise,
    and for ``max_groups`` < 2, the rows stay one group in their order.

    Returns the groups and ``restore``: ``torch.cat([encode(g) for g in groups])[restore]`` are the rows in the
    order of ``tokens``; None when nothing was reordered.
    """
    if pad_id is None or tokens.ndim != 2 or min(tokens.shape) == 0 or tokens.shape[0] < 2 or max_groups < 2:
        return [trim_padding(tokens, pad_id)], None
    lengths = token_lengths(tokens, pad_id)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    cuts = _cuts(sorted_lengths, max_groups)
    if len(cuts) == 1:
        return [trim_padding(tokens, pad_id)], None
    groups = [tokens[order[i:j], : sorted_lengths[j - 1]] for i, j in cuts]
    restore = torch.empty_like(order)
    restore[order] = torch.arange(order.numel(), device=order.device)
    return groups, restore
