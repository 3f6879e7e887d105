#!/usr/bin/env bash
# The experiments of docs/reproduction.md, one after another (about 80 minutes on a 2-core CPU):
# the TAKD regimes (1k, 5k and 20k images, full-width and quarter-width students, 5 seeds), Cho & Hariharan's
# early-stopped teacher, and the teacher-assistant searches. Too long for CI, which runs tiny versions
# of each command (tests/test_sweep.py, tests/test_tune.py). Run from the repository's root after
# ./scripts/setup.sh; results go to runs/regimes/ (the early-stopped sweep reads its teacher there).
set -euo pipefail
cd "$(dirname "$0")/.."
KDFRAME=.venv/bin/kdframe
OUT=runs/regimes
mkdir -p "$OUT"
step() {
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: kdframe $*"
  "$KDFRAME" "$@" > "$OUT/$name.log" 2>&1 || { echo "   failed: see $OUT/$name.log"; exit 1; }
  echo "   $((SECONDS - start)) s"
}
step regime-1k sweep examples/regimes/regime_1k.json --out "$OUT/regime-1k" --quiet
step regime-5k sweep examples/regimes/regime_5k.json --out "$OUT/regime-5k" --quiet
step regime-20k sweep examples/regimes/regime_20k.json --out "$OUT/regime-20k" --quiet
step teacher20k-student5k sweep examples/regimes/teacher_20k_student_5k.json --out "$OUT/teacher20k-student5k" --quiet  # loads runs/regimes/regime-20k's teacher
step es-teacher run examples/regimes/early_stopped_teacher_5k.json --out "$OUT/es-teacher" --quiet
step early-stopped sweep examples/regimes/early_stopped_5k.json --out "$OUT/early-stopped" --quiet
step ta-search tune examples/ta_search_fashion_mnist.tune.json --out "$OUT/ta-search" --quiet
step ta-chain tune examples/ta_chain_length_fashion_mnist.tune.json --out "$OUT/ta-chain" --quiet
