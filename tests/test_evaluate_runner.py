"""evaluate(): heads chosen per label space, top-k, masks and label maps, role averages."""

from __future__ import annotations

import pytest
import torch

from arf.evaluate import EvalOptions, Head, ModelTag, evaluate, label_groups, role_averages, topk_correct
from arf.evaluate.runner import predict_set
from evaluate_fixtures import NAMES, OracleBundle, make_set

OPTS = EvalOptions(batch_size=3, progress=False)


def by_key(records):
    return {(r.set, r.metric): r for r in records}


def test_right_by_construction_is_100_percent(tmp_path):
    bundle = OracleBundle(NAMES)
    sets = [
        make_set(tmp_path, "id8", "id", list(range(8))),
        make_set(tmp_path, "shift3", "shift", [2, 0, 1], per_class=3),
        make_set(tmp_path, "zs4", "zeroshot", [4, 5, 6, 7]),
    ]
    recs = evaluate(bundle, sets, tag=ModelTag("oracle", method="zeroshot", seed=0), opts=OPTS)
    got = by_key(recs)
    assert got[("id8", "top1")].value == 100.0
    assert got[("id8", "top5")].value == 100.0
    # top-5 only where there are more than 5 classes
    assert ("shift3", "top5") not in got and ("zs4", "top5") not in got
    assert got[("shift3", "top1")].value == 100.0 and got[("shift3", "top1")].n == 9
    assert {r.role for r in recs} == {"id", "shift", "zeroshot"}
    assert all(r.seed == 0 and r.method == "zeroshot" and r.alpha is None for r in recs)


def test_mislabelled_images_lower_accuracy_exactly(tmp_path):
    bundle = OracleBundle(NAMES)
    ds = make_set(tmp_path, "s", "id", list(range(8)), per_class=2, wrong=4)  # 4 of 16 wrong
    got = by_key(evaluate(bundle, [ds], opts=OPTS))
    assert got[("s", "top1")].value == pytest.approx(100.0 * 12 / 16)


def test_train_role_is_skipped_by_default(tmp_path):
    bundle = OracleBundle(NAMES)
    sets = [make_set(tmp_path, "tr", "train", [0, 1]), make_set(tmp_path, "v", "val", [0, 1])]
    assert {r.set for r in evaluate(bundle, sets, opts=OPTS)} == {"v"}


def test_trained_head_used_only_for_its_label_space(tmp_path):
    bundle = OracleBundle(NAMES)
    ref = [0, 1, 2, 3]
    # A trained head that maps class k's feature to class (k+1) % 4: always wrong on its own label space.
    w = torch.zeros(4, 8)
    for k in range(4):
        w[(k + 1) % 4, k] = 10.0
    head = Head(weight=w, bias=torch.zeros(4), classnames=[NAMES[c] for c in ref], kind="trained", reference="ref")
    sets = [
        make_set(tmp_path, "same", "id", ref),
        make_set(tmp_path, "masked", "shift", [1, 2], class_mask=[1, 2]),
        make_set(tmp_path, "other", "zeroshot", [5, 6]),
    ]
    got = by_key(evaluate(bundle, sets, head, opts=OPTS))
    assert got[("same", "top1")].value == 0.0  # the trained head's (wrong) predictions were used
    assert got[("masked", "top1")].value == 0.0  # ... through the mask: blue scored as "red" → wrong
    assert got[("other", "top1")].value == 100.0  # zero-shot head of the model for a foreign label space
    assert [got[(s, "top1")].head for s in ("same", "masked", "other")] == ["trained", "trained", "zeroshot"]


def test_predict_set_gives_per_image_predictions_evaluate_scores(tmp_path):
    bundle = OracleBundle(NAMES)
    ds = make_set(tmp_path, "s", "id", list(range(8)), per_class=2, wrong=4)  # the first 4 labels are off by one
    p = predict_set(bundle, ds, opts=OPTS)
    assert p.index.tolist() == list(range(16)) and p.labels.tolist() == ds.labels and p.head == "zeroshot"
    assert (p.pred != p.labels).nonzero().flatten().tolist() == [0, 1, 2, 3]
    top1 = by_key(evaluate(bundle, [ds], opts=OPTS))[("s", "top1")].value
    assert top1 == pytest.approx(100.0 * float((p.pred == p.labels).float().mean()))
    # the trained head, through a class mask, as evaluate() would: blue (ref 2) is scored as "red" → wrong
    w = torch.zeros(4, 8)
    for k in range(4):
        w[(k + 1) % 4, k] = 10.0
    head = Head(weight=w, bias=torch.zeros(4), classnames=[NAMES[c] for c in range(4)], kind="trained")
    masked = predict_set(bundle, make_set(tmp_path, "m", "shift", [1, 2], class_mask=[1, 2]), head, OPTS)
    assert masked.head == "trained" and masked.pred.tolist() == [1, 1, 0, 0] != masked.labels.tolist()


def test_label_groups_rules():
    head = Head(torch.zeros(4, 2), torch.zeros(4), ["a", "b", "c", "d"], reference="ref")

    class S:
        def __init__(self, classnames, class_mask=None, label_map=None, reference=None):
            self.classnames, self.class_mask, self.label_map, self.reference = (classnames, class_mask, label_map,
                                                                                reference)

    assert label_groups(S(["a", "b", "c", "d"]), head) == (True, None)
    assert label_groups(S(["c", "a"], class_mask=[2, 0]), head) == (True, [[2], [0]])
    # a mask whose names disagree with the head is not this head's label space
    assert label_groups(S(["x", "a"], class_mask=[2, 0]), head) == (False, None)
    assert label_groups(S(["o1", "o2"], label_map={0: [1, 3], 1: [0]}, reference="ref"), head) == (True,
                                                                                                   [[1, 3], [0]])
    assert label_groups(S(["o1", "o2"], label_map={0: [1], 1: [0]}, reference="other"), head) == (False, None)
    assert label_groups(S(["z"]), head) == (False, None)


def test_topk_with_mask_and_label_map_on_hand_made_logits():
    logits = torch.tensor([
        [0.0, 5.0, 1.0, 2.0],  # argmax 1
        [9.0, 0.0, 3.0, 1.0],  # argmax 0 overall, 2 among {2, 3}
        [0.0, 1.0, 2.0, 8.0],  # argmax 3
    ])
    # no projection
    assert topk_correct(logits, torch.tensor([1, 2, 3]), None, (1, 2)) == {1: 2, 2: 3}
    # class_mask [3, 2]: set label 0 = ref 3, label 1 = ref 2 → logits[:, [3, 2]]
    masked = [[3], [2]]
    # masked rows: [2, 1] → 0, [1, 3] → 1, [8, 2] → 0
    assert topk_correct(logits, torch.tensor([0, 1, 1]), masked, (1,)) == {1: 2}
    assert topk_correct(logits, torch.tensor([0, 1, 1]), masked, (2,)) == {2: 3}
    # label_map: label 0 ← refs {0, 1}, label 1 ← refs {2, 3}; correct iff argmax over mapped refs is in the group
    groups = [[0, 1], [2, 3]]
    assert topk_correct(logits, torch.tensor([0, 1, 1]), groups, (1,)) == {1: 2}  # row 1: 9 (ref 0) wins → label 0
    assert topk_correct(logits, torch.tensor([0, 0, 1]), groups, (1,)) == {1: 3}


def test_role_averages_from_roles_not_names(tmp_path):
    bundle = OracleBundle(NAMES)
    sets = [
        make_set(tmp_path, "a", "id", [0, 1], per_class=2, wrong=1),  # 75
        make_set(tmp_path, "b", "shift", [0, 1], per_class=2, wrong=2),  # 50
        make_set(tmp_path, "c", "shift", [0, 1], per_class=2),  # 100
        make_set(tmp_path, "d", "zeroshot", [2, 3], per_class=2, wrong=1),  # 75
    ]
    avg = role_averages(evaluate(bundle, sets, opts=OPTS))
    assert avg == {"ID": 75.0, "OOD avg": 75.0, "zero-shot avg": 75.0}


def test_model_tag_reads_training_provenance_not_architecture_seed(tmp_path):
    import json

    from arf.evaluate import model_tag

    ck = tmp_path / "run" / "final"
    ck.mkdir(parents=True)
    (ck / "arf.json").write_text(json.dumps({"model_id": "arf:tiny-clip", "info": {"seed": 7},
                                             "train": {"method": "lpft", "seed": 2, "config_hash": "abc"}}))
    tag = model_tag(str(ck))
    assert (tag.method, tag.seed, tag.config_hash) == ("lpft", 2, "abc")
    assert tag.model == str(ck.resolve())
    assert model_tag(str(ck), method="x", seed=9).method == "x"
    # a run config beside the checkpoint is used when arf.json has no provenance
    (ck / "arf.json").write_text(json.dumps({"model_id": "m", "info": {"seed": 7}}))
    (tmp_path / "run" / "config.yaml").write_text("method: flyp\nseed: 4\n")
    assert (model_tag(str(ck)).method, model_tag(str(ck)).seed) == ("flyp", 4)
    assert model_tag("arf:tiny-clip") == ModelTag("arf:tiny-clip", "zeroshot")


def test_records_identify_weights_and_sets_and_skip_done(tmp_path):
    from arf.evaluate import evaluate_to_file, read_records

    bundle = OracleBundle(NAMES)
    sets = [make_set(tmp_path, "a", "id", [0, 1]), make_set(tmp_path, "b", "shift", [0, 1], wrong=1)]
    out = tmp_path / "r.jsonl"
    first = evaluate_to_file(bundle, sets, None, out, opts=OPTS)
    assert len({r.config_hash for r in first}) == 2
    assert evaluate_to_file(bundle, sets, None, out, opts=OPTS) == first
    assert read_records(out) == first
    # changed weights (even with the same model id) or changed labels → evaluated again
    with torch.no_grad():
        bundle.model.proj.weight.add_(1.0)
    again = evaluate_to_file(bundle, sets[:1], None, out, opts=OPTS)
    assert again[0].config_hash != first[0].config_hash and len(read_records(out)) == 3
    relabelled = make_set(tmp_path, "a", "id", [0, 1], wrong=1)
    third = evaluate_to_file(bundle, [relabelled], None, out, opts=OPTS)
    assert third[0].value == 75.0 and len(read_records(out)) == 4


def test_a_set_with_a_content_hash_is_evaluated_again_when_its_images_change(tmp_path):
    # Same paths and labels, other image bytes (a rebuilt benchmark): the offline sets carry their table's sha256,
    # which the cache key includes; a set without one keeps the path-only key.
    import dataclasses

    from arf.evaluate import evaluate_to_file, read_records, set_fingerprint

    bundle = OracleBundle(NAMES)
    plain = make_set(tmp_path, "a", "id", [0, 1])
    hashed = dataclasses.replace(plain, info={**plain.info, "content_sha256": "aa"})
    rebuilt = dataclasses.replace(plain, info={**plain.info, "content_sha256": "bb"})
    assert len({set_fingerprint(s) for s in (plain, hashed, rebuilt)}) == 3
    assert set_fingerprint(dataclasses.replace(plain, info={**plain.info, "content_sha256": None})) == \
        set_fingerprint(plain)
    out = tmp_path / "r.jsonl"
    first = evaluate_to_file(bundle, [hashed], None, out, opts=OPTS)
    assert evaluate_to_file(bundle, [hashed], None, out, opts=OPTS) == first
    assert evaluate_to_file(bundle, [rebuilt], None, out, opts=OPTS)[0].config_hash != first[0].config_hash
    assert len(read_records(out)) == 2 * len(first)


def test_same_weights_head_and_set_under_another_tag_are_reused_not_reevaluated(tmp_path, monkeypatch):
    import arf.evaluate.runner as runner
    from arf.evaluate import evaluate_to_file, read_records

    calls: list[str] = []
    real = runner.encode_set

    def counting(bundle, ds, opts):
        calls.append(ds.name)
        return real(bundle, ds, opts)

    monkeypatch.setattr(runner, "encode_set", counting)
    bundle = OracleBundle(NAMES)
    sets = [make_set(tmp_path, "a", "id", [0, 1]), make_set(tmp_path, "b", "zeroshot", [2, 3], wrong=1)]
    out = tmp_path / "r.jsonl"
    first = evaluate_to_file(bundle, sets, None, out, tag=ModelTag("base"), opts=OPTS)
    assert calls == ["a", "b"]
    other = ModelTag("runs/x/final", method="flyp", alpha=0.0, seed=1, config_hash="trainhash")
    copied = evaluate_to_file(bundle, sets, None, out, tag=other, opts=OPTS)
    assert calls == ["a", "b"]                                            # nothing encoded again
    assert [(r.model, r.method, r.alpha, r.seed) for r in copied] == [("runs/x/final", "flyp", 0.0, 1)] * 2
    assert [(r.set, r.value, r.config_hash) for r in copied] == [(r.set, r.value, r.config_hash) for r in first]
    assert read_records(out) == first + copied                            # recorded under the new tag
    # Other weights under that tag: evaluated.
    with torch.no_grad():
        bundle.model.proj.weight.add_(1.0)
    evaluate_to_file(bundle, sets[:1], None, out, tag=other, opts=OPTS)
    assert calls == ["a", "b", "a"]
