"""Which classes a model gets wrong on some sets of a suite, and what it predicts instead.

    python scripts/confusions.py MODEL [--suite offline] [--data-root DIR] [--sets val,id] [--top 10]

MODEL is what `arf eval --model` takes (a model id or a checkpoint folder). Per set: top-1, the number of errors
and of classes with one, the most frequent (true → predicted) pairs and the classes predicted most often in
error. A set is read with the checkpoint's trained head where it covers the set's classes (also through a
class mask or label map, projected as `arf eval` does), else with the zero-shot head of its class names ×
templates. Written to ask why a model's ID test accuracy falls further below its val accuracy than its peers' do
(docs/RESULTS.md "Still to do").
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from arf.data import get_suite
from arf.errors import ArfError
from arf.evaluate.runner import predict_set
from arf.evaluate.zeroshot import load_trained_head
from arf.models import create_model


def confusions(model: str, suite: str, sets: list[str], top: int = 10, data_root: str | None = None) -> str:
    bundle = create_model(model)
    trained = load_trained_head(model)  # None for a model id
    suite_ = get_suite(suite, data_root)
    by_name = suite_.select(sets, "--sets")
    lines = [f"# {model}", ""]
    for name in sets:
        ds = by_name[name]
        p = predict_set(bundle, ds, trained)
        pred, labels = p.pred, p.labels
        wrong = (pred != labels).nonzero().flatten().tolist()
        names = ds.classnames
        pairs = Counter((names[int(labels[i])], names[int(pred[i])]) for i in wrong)
        guessed = Counter(names[int(pred[i])] for i in wrong)
        acc = 100.0 * (1 - len(wrong) / max(len(labels), 1))
        lines += [f"## {name} ({'trained' if p.head == 'trained' else 'zero-shot'} head)", "",
                  f"top-1 {acc:.1f} % of {len(labels)}; {len(wrong)} errors in "
                  f"{len({t for t, _ in pairs})} of {len(names)} classes", "",
                  "| true → predicted | n |", "|---|---:|"]
        lines += [f"| {t} → {p} | {n} |" for (t, p), n in pairs.most_common(top)]
        lines += ["", "predicted most often in error: "
                  + (", ".join(f"{c} ({n})" for c, n in guessed.most_common(top)) or "–"), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--suite", default="offline")
    ap.add_argument("--data-root", help="the suite's data folder (default: where `arf data build` puts it)")
    ap.add_argument("--sets", default="val,id", help="comma-separated set names of the suite")
    ap.add_argument("--top", type=int, default=10, help="how many pairs and classes to list")
    args = ap.parse_args()
    try:
        with torch.no_grad():
            print(confusions(args.model, args.suite, [s for s in args.sets.split(",") if s], args.top, args.data_root))
    except ArfError as e:  # one line naming the flag or file, as `arf` itself says it
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
