#!/usr/bin/env bash
# The prepared GPU check, for a lent H100/H200 (the device tool), about 6-8 minutes:
#   1. the card: nvidia-smi, torch's view, a bf16 matmul's TFLOP/s;
#   2. DeepSpeed ZeRO-2 and ZeRO-3 over NCCL in bf16 through the engine's own runtime
#      (bench/gpu_zero.py, SmolLM2-135M's shape): loss falls, step time, tokens/s, MFU, peak memory;
#   3. the engine beside TRL's SFTTrainer, LoRA SFT, bf16 (bench/engine_lora_sft.py --device cuda):
#      tokens/s and MFU of both in the same run, on a SmolLM2-shaped model with random weights
#      (the GGUF is too big to travel; throughput depends on the shape, not the weights).
# Prepare here:  bench/gpu_wheels.sh            (wheels the device lacks -> .whl/, about 20 MB)
# Run there:     device run, carry [".whl"], timeout_s 540, command: bash bench/gpu_check.sh
# Results: JSON under $OUT (the device tool brings them back) and the log on stdout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-.cache/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TMPDIR=/tmp/tf-tmp TORCH_EXTENSIONS_DIR=/tmp/tf-ext
mkdir -p "$TMPDIR" "$TORCH_EXTENSIONS_DIR"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/services:$PWD${PYTHONPATH:+:$PYTHONPATH}
# The engine imports the generated protobuf of tuneforge.common only through errors; generate if we can.
if python3 -c "import grpc_tools" 2>/dev/null; then
  python3 -m grpc_tools.protoc -I protos --python_out=services protos/tuneforge/*/v1/*.proto || true
fi
status=0
echo "== 1. the card"; nvidia-smi || status=1
python3 - <<'PY' | tee "$OUT/card.json" || status=1
import json, time, torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); s = (time.perf_counter() - t) / 10
print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "bf16_supported": torch.cuda.is_bf16_supported(), "bf16_matmul_tflops": 2 * 8192**3 / s / 1e12}))
PY
echo "== 2. DeepSpeed ZeRO-2/3 over NCCL, bf16, through the engine's runtime"
timeout 240 python3 bench/gpu_zero.py --stages 2,3 --steps 12 --json "$OUT/zero.json" || status=1
echo "== 3. engine vs TRL SFTTrainer, LoRA, bf16"
model=/tmp/tf-smollm2-shape
python3 - "$model" <<'PY' || status=1
import sys; from pathlib import Path
from tuneforge.engine.models.tiny import build_tiny_model
# SmolLM2-135M's shape with a tokenizer trained on the fly (vocabulary padded to 49152 by the config).
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
out = Path(sys.argv[1]); build_tiny_model(out, vocab_size=4096)
tok = AutoTokenizer.from_pretrained(out)
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
LlamaForCausalLM(cfg).save_pretrained(out)
PY
timeout 300 python3 bench/engine_lora_sft.py --device cuda --model-dir "$model" --steps 12 --warmup 3 \
  --out "$OUT/engine_lora_sft.json" || status=1
echo "gpu_check status=$status"; exit $status
