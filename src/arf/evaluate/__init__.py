"""Evaluation: zero-shot and trained heads, suites → JSONL records, WiSE-FT interpolation.

```python
bundle = arf.models.create_model("arf:mini-clip")
records = evaluate(bundle, arf.data.get_suite("offline"))   # list[Record], values in percent
append_records("records.jsonl", records)
role_averages(records)                                      # {"ID": …, "OOD avg": …, "zero-shot avg": …}
interpolate(theta0, theta1, 0.5)                            # pure, on state dicts
```
"""

from arf.evaluate.records import AVERAGES, Record, append_records, dedupe, read_records, role_averages
from arf.evaluate.runner import (
    EvalOptions,
    ModelTag,
    encode_set,
    evaluate,
    evaluate_to_file,
    label_groups,
    model_tag,
    set_fingerprint,
    topk_correct,
)
from arf.evaluate.wise import interpolate, interpolate_heads, parse_alphas, wise_points, wise_sweep
from arf.evaluate.zeroshot import Head, HeadCache, load_trained_head, save_head, zeroshot_head

__all__ = [
    "AVERAGES",
    "EvalOptions",
    "Head",
    "HeadCache",
    "ModelTag",
    "Record",
    "append_records",
    "dedupe",
    "encode_set",
    "evaluate",
    "evaluate_to_file",
    "interpolate",
    "interpolate_heads",
    "label_groups",
    "load_trained_head",
    "model_tag",
    "parse_alphas",
    "read_records",
    "role_averages",
    "save_head",
    "set_fingerprint",
    "topk_correct",
    "wise_points",
    "wise_sweep",
    "zeroshot_head",
]
