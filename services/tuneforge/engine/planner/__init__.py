"""Memory planner: per-GPU memory of a fine-tuning job, and the cheapest setup that fits.

Public API:
    plan_memory(model_config, method, seq_len, micro_batch, num_gpus, gpu_memory_bytes, ...) -> MemoryPlan
    plan_online_rl(model_config, method, prompt_len=, max_new_tokens=, prompts=, num_generations=,
                   reference=, value_model=False, ...) -> MemoryPlan
        An online RL step: the update plus the reference copy, PPO's value model, the generation's
        KV cache and the rollout buffers (``_online_rl``).
    recommend(model_config, seq_len, num_gpus, gpu_memory_bytes, ...) -> Recommendation
    count_parameters(model_config) -> ParameterCount
    Method, Precision, Quantization: the options the planner understands (values match the spec's).

The model is described by its Hugging Face config alone (a ``PretrainedConfig`` or its dict); no
weights are loaded and neither torch nor transformers is imported. Decoder-only Llama-family
architectures are supported: ``llama``, ``mistral``, ``qwen2``, ``qwen3``.

How the figures are made (P parameters, T trainable parameters, N GPUs):

* **Model states** follow DeepSpeed's accounting, so that they equal its own
  ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``
  (tests/unit/engine/test_planner.py). In 16-bit mixed precision each trainable parameter
  costs 2 bytes of weights, 2 of gradients and 16 of optimizer state (fp32 master copy, AdamW's two
  fp32 moments, and the fp32 gradient partition the optimizer steps on). In fp32, 4 + 4 + 8.
  ZeRO-1 divides the optimizer state by N, ZeRO-2 the gradients too, ZeRO-3 also the weights; at
  stage 3 the 16-bit gradients are reduced straight into the fp32 partition (inside the 16 bytes)
  and one gathered module (weights + gradients) is held at a time.
  Optimizer offload moves optimizer state and gradients to host memory (stage 1-3); parameter
  offload (stage 3) moves the weight partitions too. The engine's own single-process loop keeps
  fp32 weights under autocast (4 + 4 + 8 bytes, plus 16-bit weight copies while they are in use):
  within 10% of the 20 bytes counted here.
* **Frozen weights** (LoRA, QLoRA) cost their storage only: 2 bytes per parameter in 16 bits,
  4 in fp32, and for QLoRA the decoder's linear weights take 0.5 byte (nf4/fp4) or 1 byte (int8)
  plus their quantization constants (an fp32 absmax per 64-weight block, or with double
  quantization an 8-bit absmax plus an fp32 constant per 256 blocks; an fp32 scale per row for
  int8). Embeddings, norms and the output head stay in the compute dtype.
* **Activations** are counted tensor by tensor from what autograd saves in a Hugging Face Llama
  decoder layer, in the style of Korthikanti et al., "Reducing Activation Recomputation in Large
  Transformer Models" (2022), whose GPT layer needs ``s*b*h*(34 + 5*a*s/h)`` bytes in 16 bits.
  A Llama layer differs (RMSNorm upcasts to fp32, SwiGLU, grouped KV heads, no dropout, fused
  attention), see ``_layer_activation_bytes``. With gradient checkpointing each layer keeps only
  its input and one layer is recomputed at a time. The loss adds the logits, the fp32 log-softmax
  and their gradients (``_loss_bytes``), usually the largest single term for big vocabularies.
  Gradients are counted as live beside the activations: DeepSpeed keeps its gradient buffers, and
  for plain PyTorch (gradients freed by ``zero_grad``) this makes the estimate conservative by at
  most the gradient bytes.
  The estimate is checked against the measured peak of a real training step on CPU
  (tests/unit/engine/test_planner_measured.py).

Not counted: the CUDA context and allocator fragmentation (``recommend`` keeps a safety margin for
them), communication buckets beyond DeepSpeed's own figures, and the optimizer's per-tensor
temporaries during the step (at most two copies of the largest tensor, when activations are gone).
"""

from tuneforge.engine.planner._estimate import (
    GIB,
    LINEAR_MODULES,
    MemoryPlan,
    Method,
    ParameterCount,
    Precision,
    Quantization,
    count_parameters,
    plan_memory,
)
from tuneforge.engine.planner._online_rl import plan_online_rl
from tuneforge.engine.planner._recommend import Recommendation, recommend

__all__ = [
    "GIB", "LINEAR_MODULES", "MemoryPlan", "Method", "ParameterCount", "Precision", "Quantization",
    "Recommendation", "count_parameters", "plan_memory", "plan_online_rl", "recommend",
]
