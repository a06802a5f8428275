"""WiSE-FT sweeps: the text tower's frozen embeddings and first layers run once per prompt batch, not once per α.

A model finetuned with ``freeze_text_blocks: K`` (flyp, arf and their ablations in configs/offline) holds its text
tower's embeddings and first K layers bit-identical to θ0's, and :func:`arf.evaluate.wise.interpolate` leaves such
tensors as they are, so at every α of a sweep those layers give the same hidden states for the same prompts. The
zero-shot heads, rebuilt at every α because the rest of the text tower moves, are most of a flyp or arf sweep's time
on the offline demo. :class:`TextPrefixCache` keeps the hidden states after the last shared layer per token batch
and, for a batch seen before, lets the tower start there (docs/BENCHMARKS.md run W: the demo's WiSE-FT stage took
60 s instead of 85 with this cache and the image prefix store, 83 instead of 89 with the store alone).

Only Hugging Face encoders as open_clip wraps them (``model.text.transformer`` with ``embeddings`` and
``encoder.layer``, e.g. the offline base's MiniLM) are supported; open_clip's own text transformer is not. The
modules are not replaced (the weights' fingerprints, which key every record, must not change): their ``forward`` is
wrapped on the instance while the cache is active. Guards, as for the image prefix: the first batch served from the
cache is also computed in full and must match bit for bit (else the cache is switched off), and
:meth:`TextPrefixCache.check`, called at each α, has the shared tensors compared with their reference before the
cache serves again (only then: a sweep whose records are all done builds no head and pays for no comparison).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from arf.models.trunk import same_state

log = logging.getLogger(__name__)

# Hidden states kept at most (float32 on the offline base: ~15 KB per prompt; a demo sweep's ~3,700 prompts ~55 MB).
MAX_TEXT_CACHE_BYTES = 1 << 30


def _encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.ModuleList] | None:
    """(text tower, its embeddings, its layers) for an open_clip-wrapped HF encoder, else None."""
    text = getattr(model, "text", None)
    hf = getattr(text, "transformer", None)
    emb = getattr(hf, "embeddings", None)
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if text is None or emb is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    return text, emb, layers


class TextPrefixCache:
    """Hidden states after the first ``k`` layers of ``model``'s text tower, per token batch (see the module doc)."""

    def __init__(self, model: nn.Module, k: int, max_bytes: int = MAX_TEXT_CACHE_BYTES) -> None:
        parts = _encoder_parts(model)
        if parts is None or not 1 <= k <= len(parts[2]):
            raise ValueError(f"no text prefix of {k} layers to cache in this model")
        self.text, self.emb, self.layers = parts
        self.k = k
        self.max_bytes = max_bytes
        self.reference: dict[str, torch.Tensor] | None = None  # taken when the cache is first used
        self._recheck = False
        self.states: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.enabled = True
        self.verified = False
        self._key: str | None = None  # the token batch being encoded (None: not cacheable)
        self._hit = False
        self._orig: dict[int, Any] = {}  # the modules' own forwards while active

    @classmethod
    def for_models(cls, model0: nn.Module, model1: nn.Module,
                   max_bytes: int = MAX_TEXT_CACHE_BYTES) -> TextPrefixCache | None:
        """A cache over ``model0`` for the embeddings and leading text layers both models hold bit-identically."""
        p0, p1 = _encoder_parts(model0), _encoder_parts(model1)
        if p0 is None or p1 is None or len(p0[2]) != len(p1[2]) or not same_state(p0[1], p1[1]):
            return None
        k = 0
        while k < len(p0[2]) and same_state(p0[2][k], p1[2][k]):
            k += 1
        if k == 0:
            return None
        log.info("WiSE-FT: text embeddings and first %d text layers are identical in both models; their output is "
                 "computed once per prompt batch", k)
        return cls(model0, k, max_bytes)

    def _prefix_state(self) -> dict[str, torch.Tensor]:
        mods = [self.emb, *self.layers[: self.k]]
        return {f"{i}.{name}": t for i, m in enumerate(mods) for name, t in m.state_dict().items()}

    def check(self) -> None:
        """Call after loading new weights: before it serves again, the cache compares its shared tensors with the
        reference (a changed prefix, which cannot happen in a sweep, empties and stops it)."""
        self._recheck = True

    def _prefix_unchanged(self) -> bool:
        if self.reference is None:
            self.reference = {k: v.detach().clone() for k, v in self._prefix_state().items()}
        elif self._recheck and not same_state(self._prefix_state(), self.reference):
            log.warning("the text tower's shared layers changed; text prefix cache switched off")
            self._switch_off()
        self._recheck = False
        return self.enabled

    def _switch_off(self) -> None:
        self.enabled = False
        self.states.clear()
        self.bytes = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[TextPrefixCache]:
        """Wrap the tower's forwards (on the instances; nothing in the state dict changes) while inside."""
        modules = [self.text, self.emb, *self.layers[: self.k]]
        wrappers = [self._text_forward, self._emb_forward, *[self._layer_forward(i) for i in range(self.k)]]
        own = [m.__dict__.get("forward") for m in modules]  # a forward already set on an instance is put back
        self._orig = {id(m): m.forward for m in modules}
        for m, f in zip(modules, wrappers, strict=True):
            m.forward = f
        try:
            yield self
        finally:
            for m, f in zip(modules, own, strict=True):
                if f is None:
                    del m.forward
                else:
                    m.forward = f

    # -- wrapped forwards -------------------------------------------------------------------------------------------
    def _text_forward(self, x: torch.Tensor, *args: Any, **kw: Any) -> Any:
        orig = self._orig[id(self.text)]
        if not self.enabled or self.verified or _token_key(x) not in self.states:
            return orig(x, *args, **kw)
        # The first batch the cache would serve: computed both ways, which must agree bit for bit.
        self.enabled = False
        full = orig(x, *args, **kw)
        self.enabled = True
        cached = orig(x, *args, **kw)
        same = type(full) is type(cached) and (
            torch.equal(full, cached) if isinstance(full, torch.Tensor)
            else all(torch.equal(a, b) for a, b in zip(full, cached, strict=True)))
        if not same:
            log.warning("the text tower started from cached hidden states differs from the full tower; text prefix "
                        "cache switched off")
            self._switch_off()
            return full
        self.verified = True
        return cached

    def _emb_forward(self, input_ids: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        # Cacheable: token ids alone (BertModel passes position / token type ids and embeddings as None, no cache).
        plain = input_ids is not None and not kw.get("cache_length") and all(
            v is None for name, v in kw.items() if name != "cache_length")
        cacheable = self.enabled and plain and input_ids is not None and self._prefix_unchanged()
        self._key = _token_key(input_ids) if cacheable and input_ids is not None else None
        cached = self.states.get(self._key) if self._key is not None else None
        self._hit = cached is not None
        if cached is not None and input_ids is not None:
            return cached.to(input_ids.device).clone()
        return self._orig[id(self.emb)](input_ids=input_ids, **kw)

    def _layer_forward(self, i: int) -> Any:
        layer = self.layers[i]

        def forward(hidden_states: torch.Tensor, *args: Any, **kw: Any) -> Any:
            if self._hit:
                return hidden_states  # already the output of layer k - 1
            out = self._orig[id(layer)](hidden_states, *args, **kw)
            if i == self.k - 1 and self._key is not None:
                self._store(self._key, out)
            return out

        return forward

    def _store(self, key: str, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            # A layer returning a tuple (older transformers): a cached tensor could not stand in for it.
            log.info("text layers return %s, not a tensor; text prefix cache switched off", type(out).__name__)
            self._switch_off()
            return
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self.states[key] = out.detach().clone()
            self.bytes += size


def _token_key(ids: torch.Tensor) -> str:
    t = ids.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy())
    return h.hexdigest()
