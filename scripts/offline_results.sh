#!/usr/bin/env bash
# The protocol behind docs/RESULTS.md §1: every method of configs/offline/ on the offline benchmark, several
# seeds, every image of every set evaluated, WiSE-FT of ft / flyp / arf, one report with mean ± std. Runs after
# `./run demo` (it reuses the demo's caption and retrieved-anchor files, which are what configs/offline/arf.yaml's
# λ were chosen with).
#
#   scripts/offline_results.sh [OUT=runs/offline-results] [SEEDS="0 1 2"]
#   ALPHAS=0.25,0.5,0.75 (default; "" skips WiSE-FT)  NPROC=2  DEMO=runs/demo
#   TOWER_METHODS="ft flyp arf" (default; add arf-both arf-cap for the anchor ablations, arf-ft for the anchors on
#   FT's loss)
#
# ft / flyp / arf (and any other TOWER_METHODS) train under `torchrun --nproc_per_node $NPROC` (default 2: global batch 64 = 2 × 32);
# zeroshot, lp and lpft in one process. A run whose final/ exists is not trained again (delete it to redo);
# `arf eval` skips sets already recorded for the same weights, so a killed script is simply run again.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export ARF_HOME="${ARF_HOME:-$HOME/.cache/arf}"
export PATH="$ARF_HOME/venv/bin:$PATH" HF_HUB_OFFLINE=1
out="${1:-runs/offline-results}"
seeds="${2:-0 1 2}"
nproc="${NPROC:-2}"
alphas="${ALPHAS-0.25,0.5,0.75}"  # α 0 and 1 are the zero-shot and finetuned rows, evaluated anyway
demo="${DEMO:-$repo/runs/demo}"
tower_methods="${TOWER_METHODS:-ft flyp arf}"  # trained under torchrun, then swept with WiSE-FT
cd "$repo"
caps="$demo/anchors/captions/captions.parquet"
anchors="$demo/anchors/retrieved"
[ -f "$caps" ] && [ -d "$anchors" ] || { echo "no demo anchors under $demo: run ./run demo first" >&2; exit 2; }
mkdir -p "$out"
records="$out/records.jsonl"

train() {  # method seed launcher...
  local method="$1" seed="$2"; shift 2
  local name="$method-s$seed" extra=()
  case "$method" in arf|arf-*) extra=(--set captions="$caps" --set anchors="$anchors") ;; esac
  if [ ! -f "$out/$name/final/arf.json" ]; then
    echo "[results] train $name ($(date +%T))" >&2
    /usr/bin/time -f "[results] $name: %e s wall, %M KB max RSS" "$@" -m arf.cli train \
      --config "configs/offline/$method.yaml" --out-dir "$out" --name "$name" --set seed="$seed" --set progress=false \
      "${extra[@]}"
  fi
  # --method: the ablations train with method arf (their config's), but are rows of their own.
  python -m arf.cli eval --model "$out/$name/final" --suite offline --method "$method" --out "$records" >/dev/null
}

python -m arf.cli eval --model arf:mini-clip --suite offline --out "$records" >/dev/null  # the zero-shot row
for seed in $seeds; do
  train lp "$seed" python
  train lpft "$seed" python
  for method in $tower_methods; do
    train "$method" "$seed" torchrun --nproc_per_node "$nproc"
  done
done
# WiSE-FT after all training, so a killed run resumes training first; finished α are kept and recorded sets skipped.
if [ -n "$alphas" ]; then
  for seed in $seeds; do
    for method in $tower_methods; do
      echo "[results] wise $method-s$seed α $alphas ($(date +%T))" >&2
      /usr/bin/time -f "[results] wise $method-s$seed: %e s wall" python -m arf.cli wise --zeroshot arf:mini-clip \
        --finetuned "$out/$method-s$seed/final" --alphas "$alphas" --eval offline --method "$method" \
        --records "$records" >/dev/null
    done
  done
fi
python -m arf.cli report "$records" --out "$out/report" ${alphas:+--wise-alpha "$alphas"}
echo "[results] report: $out/report/results.md" >&2
