#!/usr/bin/env bash
# One extra configuration of the docs/RESULTS.md §1 protocol, for choosing hyperparameters on the val splits
# (§2): train METHOD under torchrun with extra `--set` overrides, evaluate it on every offline set and on the
# shift and zero-shot val splits (suite offline-val), and rebuild
# OUT's report. The run is named NAME; an existing NAME/final is not trained again.
#
#   scripts/offline_variant.sh OUT METHOD NAME [--set key=value ...]
#   e.g. scripts/offline_variant.sh runs/sweep arf arf-lam0.3-s0 --set lambda_cap=0.3 --set lambda_ret=0.3
#
# arf* runs get the demo's caption and retrieved-anchor files (DEMO, default runs/demo), like offline_results.sh.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,9p "$0" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
export ARF_HOME="${ARF_HOME:-$HOME/.cache/arf}"
export PATH="$ARF_HOME/venv/bin:$PATH" HF_HUB_OFFLINE=1
out="$1" method="$2" name="$3"; shift 3
demo="${DEMO:-$repo/runs/demo}"
cd "$repo"
extra=()
case "$method" in arf|arf-*)
  caps="$demo/anchors/captions/captions.parquet" anchors="$demo/anchors/retrieved"
  [ -f "$caps" ] && [ -d "$anchors" ] || { echo "no demo anchors under $demo: run ./run demo first" >&2; exit 2; }
  extra=(--set captions="$caps" --set anchors="$anchors") ;;
esac
mkdir -p "$out"
if [ ! -f "$out/$name/final/arf.json" ]; then
  echo "[variant] train $name ($(date +%T))" >&2
  /usr/bin/time -f "[variant] $name: %e s wall, %M KB max RSS" torchrun --nproc_per_node "${NPROC:-2}" -m arf.cli \
    train --config "configs/offline/$method.yaml" --out-dir "$out" --name "$name" --set progress=false "${extra[@]}" "$@"
fi
# --method: variants of one method are rows of their own, not replicates averaged together. offline-val adds the
# shift and zero-shot val sets (docs/DATA.md §1), the retention numbers a setting is chosen on beside val.
# The evaluation's log (one line per set, test sets included) goes to NAME/eval.log, not to this script's stderr,
# so that a setting can be decided on the val records before any test number is in sight.
python -m arf.cli eval --model "$out/$name/final" --suite offline,offline-val --method "$name" \
  --out "$out/records.jsonl" --no-progress >/dev/null 2>"$out/$name/eval.log" \
  || { echo "[variant] eval failed: see $out/$name/eval.log" >&2; exit 1; }
python -m arf.cli report "$out/records.jsonl" --out "$out/report" >/dev/null
echo "[variant] records: $out/records.jsonl (eval log: $out/$name/eval.log); report: $out/report/results.md" >&2
