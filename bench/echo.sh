#!/usr/bin/env bash
# Frame-echo benchmark: imreactor against the peers of ../shared/bench in one run, then ratios.
#   bench/echo.sh                         # default: s1,s2,s3,s4,s5 against a,c,e,g,h, 3 reps
#   bench/echo.sh --scenarios s2,s3 --reps 1 --servers c,g
#   bench/echo.sh --with-floor ...        # also bench/floor_server.py: the pure-Python ceiling
# Extra arguments go to ../shared/bench/run.sh (later ones win).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
SHARED=${PEER_BENCH_DIR:-../shared/bench}
mkdir -p bench/results
out=bench/results/echo-$(date +%Y%m%d-%H%M%S).jsonl
servers=a,c,e,g,h,mine
scenarios=s1,s2,s3,s4,s5
reps=3
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2,mine"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --with-floor) extra+=(--server-cmd "floor=$PWD/.venv/bin/python $PWD/bench/floor_server.py --port {port}"); shift ;;
    *) break ;;
  esac
done
"$SHARED/run.sh" --server-cmd "mine=$PWD/.venv/bin/python $PWD/bench/echo_server.py --port {port}" \
  --servers "$servers" --scenarios "$scenarios" --reps "$reps" --out "$out" "${extra[@]}" "$@"
echo
echo "## imreactor relative to each peer ($out)"
.venv/bin/python bench/ratios.py "$out"
