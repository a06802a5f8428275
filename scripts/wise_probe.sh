#!/usr/bin/env bash
# WiSE-FT towers, then a fresh linear probe ("M + wise + probe", docs/RESULTS.md §2, sixteenth session; a read-out
# variant, not the paper's formulation). The recipe as one command, α chosen on val and the text side moved, is
# `arf wise-probe` (src/arf/wise_probe.py); this script keeps the sessions' per-α records (every α on every set,
# method NAME-wlp-a<α>), with which docs/RESULTS.md §2's sweeps were made. For each α: interpolate the finetuned model's weights with the base's
# (`arf wise --out`, towers and any trained head), train the committed probe (configs/offline/lp.yaml) on that
# checkpoint's frozen features, and evaluate the probed model. The zero-shot sets read the interpolated towers'
# text head, as in plain WiSE-FT; the finetuning classes (val, id, shift) read the probe, which replaces the
# interpolated head.
#
#   scripts/wise_probe.sh OUT FINETUNED NAME SEED [ALPHAS=0.5,0.6,0.7,0.8,0.9]
#   e.g. scripts/wise_probe.sh runs/wise-probe runs/offline-results/arf-s0/final arf 0 0.6
#   SUITE=offline,offline-val (default; the suites to evaluate)  SETS= (only these sets, e.g. val)  BASE=arf:mini-clip
#   TEXT_ALPHA=T holds the text side at T while α sweeps the image tower (`arf wise --text-alpha`, per-tower WiSE-FT)
#   TEXT_AFTER=T once each probe is trained, moves the probed model's text side (which the probe never reads) to T
#     of the finetuned model's (T/α of the probed one: `arf wise --finetuned <probe> --alphas 1 --text-alpha T/α`)
#     and evaluates that too, as NAME-wlp-a<α>-pt<T> (the sixteenth session's step 3; probe first, then the text
#     side, because the probe starts from the text side's zero-shot head). Image tower and probe stay bit-identical.
#
# Writes OUT/wise-NAME-sSEED/alpha_<α>[_text_<T>]/ (the interpolated checkpoints), OUT/NAME-wlp-a<α>[-t<T>]-sSEED/
# (the probe runs; with TEXT_AFTER also their text-moved checkpoint under text-<T>/) and appends records to
# OUT/records.jsonl under method NAME-wlp-a<α>[-t<T>] (and NAME-wlp-a<α>[-t<T>]-pt<T'> for TEXT_AFTER). Finished
# checkpoints, probes and evaluated sets are kept, so a killed run is simply started again. The evaluation's log
# goes to the probe run's eval.log, not to stderr, so that α can be chosen on val records before any test number
# is in sight.
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,18p "$0" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
export ARF_HOME="${ARF_HOME:-$HOME/.cache/arf}"
export PATH="$ARF_HOME/venv/bin:$PATH" HF_HUB_OFFLINE=1
out="$1" finetuned="$2" name="$3" seed="$4" alphas="${5:-0.5,0.6,0.7,0.8,0.9}"
cd "$repo"
mkdir -p "$out"
wise="$out/wise-$name-s$seed"
text=() tag=""
[ -z "${TEXT_ALPHA:-}" ] || { text=(--text-alpha "$TEXT_ALPHA"); tag="-t$TEXT_ALPHA"; }
python -m arf.cli wise --zeroshot "${BASE:-arf:mini-clip}" --finetuned "$finetuned" --alphas "$alphas" --out "$wise" \
  "${text[@]}" --no-progress >/dev/null
sets=()
[ -z "${SETS:-}" ] || sets=(--sets "$SETS")
# evaluate MODEL METHOD LOG: append MODEL's records under METHOD; the log (test sets included) goes to LOG
evaluate() {
  python -m arf.cli eval --model "$1" --suite "${SUITE:-offline,offline-val}" "${sets[@]}" --method "$2" \
    --seed "$seed" --out "$out/records.jsonl" --no-progress >/dev/null 2>>"$3" \
    || { echo "[wise-probe] eval failed: see $3" >&2; exit 1; }
}
# α as `arf wise` parses and names them (0.6 -> alpha_0.600)
while read -r a dir; do
  ckpt="$wise/$dir"
  run="$name-wlp-a$a$tag-s$seed"
  if [ ! -f "$out/$run/final/arf.json" ]; then
    echo "[wise-probe] probe $run ($(date +%T))" >&2
    python -m arf.cli train --config configs/offline/lp.yaml --out-dir "$out" --name "$run" \
      --set model="$ckpt" --set seed="$seed" --set progress=false >/dev/null 2>"$out/$run.train.log"
    # final/ is complete (the train command exits non-zero otherwise): its resume points only take disk space
    # (with the interpolated checkpoints they filled 25 GB in a 5-α sweep of three models × three seeds).
    rm -rf "$out/$run/checkpoints"
  fi
  evaluate "$out/$run/final" "$name-wlp-a$a$tag" "$out/$run/eval.log"
  [ -n "${TEXT_AFTER:-}" ] || continue
  # T/α of the probed text side, and the folder `arf wise` names for it; one failure (T > α) stops the script
  moved=$(python -c 'import sys; from arf.evaluate.wise import alpha_dirname
t = float(sys.argv[1]) / float(sys.argv[2])
if t > 1: sys.exit(f"TEXT_AFTER={sys.argv[1]} is more than alpha {sys.argv[2]}: the probed text side holds only that much")
print(f"{t:g}", alpha_dirname(1.0, float(f"{t:g}")))' "$TEXT_AFTER" "$a")
  read -r t tdir <<< "$moved"
  python -m arf.cli wise --zeroshot "${BASE:-arf:mini-clip}" --finetuned "$out/$run/final" --alphas 1 \
    --text-alpha "$t" --out "$out/$run/text-$TEXT_AFTER" --no-progress >/dev/null
  evaluate "$out/$run/text-$TEXT_AFTER/$tdir" "$name-wlp-a$a$tag-pt$TEXT_AFTER" "$out/$run/eval-text.log"
done < <(python -c 'import sys; from arf.evaluate.wise import alpha_dirname, parse_alphas
t = float(sys.argv[2]) if sys.argv[2] else None
for a in parse_alphas(sys.argv[1]): print(f"{a:g}", alpha_dirname(a, t))' "$alphas" "${TEXT_ALPHA:-}")
echo "[wise-probe] records: $out/records.jsonl" >&2
