"""Zero-shot heads: per-template normalise → average → renormalise, scaled by the logit scale; the head cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arf.evaluate import Head, HeadCache, load_trained_head, save_head, zeroshot_head

CLASSES = ["cat", "dog", "fish"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {c}", "{}!"]


class TableText(torch.nn.Module):
    """encode_text looks up a fixed random vector per (class, template) pair; counts calls."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(len(CLASSES), len(TEMPLATES), 5, generator=g) * 3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = 0

    def encode_text(self, tokens, normalize=False):
        self.calls += 1
        out = self.table[tokens[:, 0], tokens[:, 1]]
        return F.normalize(out, dim=-1) if normalize else out


class Bundle:
    def __init__(self) -> None:
        self.model = TableText()

    def tokenizer(self, texts):
        rows = []
        for t in texts:
            c = next(i for i, n in enumerate(CLASSES) if n in t)
            k = next(i for i, tpl in enumerate(TEMPLATES) if tpl.replace("{c}", "{}").format(CLASSES[c]) == t)
            rows.append([c, k])
        return torch.tensor(rows)


def test_head_is_normalised_template_average_times_scale():
    b = Bundle()
    head = zeroshot_head(b, CLASSES, TEMPLATES, cache=HeadCache())
    expected = F.normalize(F.normalize(b.model.table.detach(), dim=-1).mean(dim=1), dim=-1) * torch.tensor(2.0).exp()
    assert torch.allclose(head.weight, expected, atol=1e-5)
    assert torch.equal(head.bias, torch.zeros(3))
    assert head.classnames == CLASSES and head.kind == "zeroshot"
    # logits = scale * cosine(image, class text)
    img = torch.randn(4, 5)
    assert torch.allclose(head.logits(img), F.normalize(img, dim=-1) @ expected.T, atol=1e-5)


def test_cache_by_weights_names_and_templates(tmp_path):
    b = Bundle()
    cache = HeadCache(tmp_path)
    h1 = zeroshot_head(b, CLASSES, TEMPLATES, cache=cache)
    calls = b.model.calls
    h2 = zeroshot_head(b, CLASSES, TEMPLATES, cache=cache)
    assert b.model.calls == calls and torch.equal(h1.weight, h2.weight)
    # from disk in a fresh cache
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    h3 = zeroshot_head(b, CLASSES, TEMPLATES, cache=HeadCache(tmp_path))
    assert b.model.calls == calls and torch.equal(h1.weight, h3.weight)
    # other templates or changed text weights → recomputed
    zeroshot_head(b, CLASSES, TEMPLATES[:1], cache=cache)
    assert b.model.calls > calls
    calls = b.model.calls
    with torch.no_grad():
        b.model.table.mul_(-1)
    h4 = zeroshot_head(b, CLASSES, TEMPLATES, cache=cache)
    assert b.model.calls > calls and torch.allclose(h4.weight, -h1.weight, atol=1e-5)


def test_trained_head_round_trip(tmp_path):
    head = Head(torch.randn(3, 5), torch.randn(3), CLASSES, kind="trained", reference="pets", templates=TEMPLATES)
    (tmp_path / "arf.json").write_text('{"model_id": "x"}')
    save_head(head, tmp_path)
    back = load_trained_head(tmp_path)
    assert back is not None and back.kind == "trained"
    assert torch.equal(back.weight, head.weight) and torch.equal(back.bias, head.bias)
    assert back.classnames == CLASSES and back.reference == "pets" and back.templates == TEMPLATES
    assert '"model_id": "x"' in (tmp_path / "arf.json").read_text()  # merged, not replaced
    assert load_trained_head(tmp_path / "nothing") is None


def test_head_from_trimmed_prompts_equals_full_context_head():
    # The real MiniLM tower masks padding, so zero-shot heads are built from prompts without their all-padding
    # columns; the head must equal the one from full-context tokens, and the text tower must see short inputs.
    from open_clip import build_zero_shot_classifier

    import arf.models
    from arf.evaluate.zeroshot import _compute_head, fill_template

    bundle = arf.models.create_model("arf:mini-clip-towers")
    names = ["dog face", "red apple", "bus stop", "hot beverage"]
    templates = ["a photo of a {}.", "an emoji of the {c}, drawn in a flat style"]
    widths: list[int] = []
    encode = bundle.model.encode_text

    def spy(tokens, *a, **k):
        widths.append(tokens.shape[1])
        return encode(tokens, *a, **k)

    bundle.model.encode_text = spy
    trimmed = _compute_head(bundle, names, templates, "cpu")
    assert widths and max(widths) < bundle.tokenizer.context_length
    bundle.model.encode_text = encode
    fill = [lambda c, t=t: fill_template(t, c) for t in templates]
    full = build_zero_shot_classifier(bundle.model.eval(), bundle.tokenizer, names, fill, device="cpu").T
    assert torch.allclose(trimmed, full.float(), atol=1e-5)


def test_weights_fingerprint_is_names_dtypes_shapes_and_bytes_of_every_tensor():
    # The format is what every cached record and head is keyed by: a change to it re-evaluates every user's runs.
    import hashlib

    from arf.evaluate.zeroshot import text_fingerprint, weights_fingerprint

    model = torch.nn.Module()
    model.visual = torch.nn.Linear(3, 2)
    model.text = torch.nn.Embedding(4, 2)
    model.register_buffer("steps", torch.tensor(7))  # integer buffers count too
    model.half_scale = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))

    def by_hand(skip_visual: bool) -> str:
        h = hashlib.sha256()
        for name, t in model.state_dict().items():
            if skip_visual and name.startswith("visual."):
                continue
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    assert weights_fingerprint(model) == by_hand(False)
    assert text_fingerprint(model) == by_hand(True) != by_hand(False)
    before = weights_fingerprint(model)
    with torch.no_grad():
        model.visual.weight[0, 0] += 1e-6
    assert weights_fingerprint(model) != before and text_fingerprint(model) == by_hand(True)
