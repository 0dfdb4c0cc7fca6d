#!/usr/bin/env bash
# Run the vLLM tests (tests/rlhf/test_vllm.py, marker `vllm`) in their own venv.
#
# Builds/refreshes the venv with scripts/vllm_env.sh first. If that fails (no network,
# no wheel for this platform, pip error) the tests cannot run: with CI=true that fails
# the run (exit 1, the reason and the log's tail printed), so CI cannot go green without
# them; elsewhere it prints one SKIP line with the reason and exits 0. Otherwise the
# exit code is pytest's.
# Extra arguments go to pytest, e.g. scripts/test_vllm.sh -k logprobs
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VLLM_VENV:-$ROOT/.venv-vllm}
LOG=$(mktemp "${TMPDIR:-/tmp}/trainkit-vllm-env.XXXXXX")
trap 'rm -f "$LOG"' EXIT
if ! bash "$ROOT/scripts/vllm_env.sh" >"$LOG" 2>&1; then
  reason=$(grep -E "ERROR|error:|No matching distribution|Could not|Errno" "$LOG" | tail -1)
  case "${CI:-}" in
    true | TRUE | True | 1 | yes)
      echo "FAIL vllm tests: could not build $VENV (${reason:-see scripts/vllm_env.sh output})"
      tail -20 "$LOG" | sed 's/^/  | /'
      exit 1
      ;;
  esac
  echo "SKIP vllm tests: could not build $VENV (${reason:-see scripts/vllm_env.sh output})"
  tail -5 "$LOG" | sed 's/^/  | /'
  exit 0
fi
grep -E "^vllm env:" "$LOG"
cd "$ROOT" || exit 1
export VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$VENV/bin/python" -m pytest -q -m vllm -p no:warnings -rs tests/rlhf/test_vllm.py "$@" \
  2>&1 | grep -vE "^\(MainProcess|^\[W|^W[0-9]{4} |^Loading safetensors|^$"
exit "${PIPESTATUS[0]}"
