#!/usr/bin/env bash
# Set up (once) and check the tutorial.
#   ./verify.sh          install what the notebooks need (requirements.txt), then execute every
#                        notebook in notebooks/ headlessly with papermill
#   ./verify.sh --tests  install what the tests need too (requirements-dev.txt), then run the whole
#                        pytest suite (which also executes the notebooks)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
CELL_TIMEOUT="${CELL_TIMEOUT:-300}"

die() { echo "verify.sh: $*" >&2; exit 1; }

usage() { echo "usage: ./verify.sh [--tests] [pytest args...]"; }

MODE=notebooks
if [[ $# -gt 0 ]]; then
  case "$1" in
    --tests) MODE=tests; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
fi

# --- prerequisites -----------------------------------------------------------
find_python() {
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
    [[ -n "$candidate" ]] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

PY="$(find_python)" || die "Python 3.11 or newer is required (found: $(python3 --version 2>&1 || echo none)). Install Python 3.11+ and run ./verify.sh again, or point PYTHON at it."
command -v node >/dev/null 2>&1 || die "Node.js (18 or newer) with npm is required to install the Copilot runtime. Install Node.js from your package manager, then run ./verify.sh again."
command -v npm >/dev/null 2>&1 || die "npm is required to install the Copilot runtime (it ships with Node.js). Install it, then run ./verify.sh again."
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 18 ]] || die "Node.js 18 or newer is required (found $(node --version))."

hash_of() { "$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# --- Python environment ------------------------------------------------------
# Each mode records the hashes of the files it installed from; a change to any of them reinstalls.
# requirements-dev.txt includes requirements.txt, so installing it satisfies the notebooks' mode too.
if [[ "$MODE" == tests ]]; then
  REQS=requirements-dev.txt
  want="$(hash_of requirements.txt)-$(hash_of requirements-dev.txt)-$(hash_of pyproject.toml)"
  MARK="$VENV/.requirements-dev.sha256"
else
  REQS=requirements.txt
  want="$(hash_of requirements.txt)-$(hash_of pyproject.toml)"
  MARK="$VENV/.requirements.sha256"
fi
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$MARK" 2>/dev/null)" != "$want" ]]; then
  echo "==> setting up .venv from $REQS (first run takes a few minutes)"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" || die "could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" \
    || die "pip install -r $REQS failed (see the messages above)"
  # `helpers` becomes importable from the notebooks, the tests and scripts, with no sys.path edits.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . \
    || die "pip install -e . failed (see the messages above)"
  echo "$want" > "$MARK"
  if [[ "$MODE" == tests ]]; then  # requirements.txt came with it
    echo "$(hash_of requirements.txt)-$(hash_of pyproject.toml)" > "$VENV/.requirements.sha256"
  fi
fi

# --- the Copilot runtime (npm) -----------------------------------------------
want="$(hash_of package-lock.json)"
if [[ ! -d node_modules/@github/copilot ]] || [[ "$(cat node_modules/.package-lock.sha256 2>/dev/null)" != "$want" ]]; then
  echo "==> installing the Copilot runtime with npm ci"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed (see the messages above)"
  echo "$want" > node_modules/.package-lock.sha256
fi

# JupyterLab started from .venv saves the tutorial's notebooks without outputs (helpers/notebook/strip_outputs.py).
mkdir -p "$VENV/etc/jupyter"
cat > "$VENV/etc/jupyter/jupyter_server_config.json" <<'JSON'
{"FileContentsManager": {"pre_save_hook": "helpers.notebook.strip_outputs.pre_save_hook"}}
JSON

export PATH="$VENV/bin:$PATH"
# Prefer this environment's python3 kernel over any user-level kernelspec of the same name.
export JUPYTER_PATH="$VENV/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
export PYTHONDONTWRITEBYTECODE=1
mkdir -p tmp/executed tmp/logs

if [[ "$MODE" == tests ]]; then
  echo "==> pytest"
  exec "$VENV/bin/python" -m pytest "$@"
fi

# --- execute the notebooks -----------------------------------------------------
passed=0; failed=0
shopt -s nullglob
notebooks=(notebooks/[0-9][0-9]_*.ipynb)
[[ ${#notebooks[@]} -gt 0 ]] || die "no notebooks found in notebooks/"
for nb in "${notebooks[@]}"; do
  name="$(basename "$nb")"
  out="tmp/executed/$name"
  log="tmp/executed/${name%.ipynb}.log"
  start=$(date +%s.%N)
  if "$VENV/bin/python" -m papermill "$nb" "$out" --kernel python3 --cwd notebooks \
       --execution-timeout "$CELL_TIMEOUT" --log-output --no-progress-bar >"$log" 2>&1; then
    status=PASS; passed=$((passed + 1))
  else
    status=FAIL; failed=$((failed + 1))
  fi
  secs=$("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$start" "$(date +%s.%N)")
  echo "$status $name (${secs} s)"
  if [[ "$status" == FAIL ]]; then
    echo "---- $log (the error; the executed notebook is $out) ----"
    if grep -q "Exception encountered" "$log"; then
      sed -n '/Exception encountered/,$p' "$log" | head -n 60
    else
      tail -n 40 "$log"
    fi
    echo "----"
  fi
done
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
