"""The memory planner against the measured peak of real training steps on CPU.

How memory is measured: the PyTorch profiler with ``profile_memory=True`` records every allocation
and free of PyTorch's CPU allocator (what tensors use) with its size and time; replaying them in
order gives the peak of live tensor bytes during the step, to the byte. Process RSS would mix in
the interpreter, lazily loaded kernels and glibc's caching of freed blocks, and tracemalloc does not
see torch's allocations at all. The bytes live before the step (weights, AdamW moments after a
first step) are added from the tensors themselves.

Tolerance: the plan may undershoot the measurement by at most 2% (it must not be optimistic), and
overshoot it by at most 5% plus the gradient bytes: the planner counts gradients as live beside the
activations (DeepSpeed keeps gradient buffers), while plain PyTorch after ``zero_grad(set_to_none)``
allocates them during backward as activations are freed.
"""

from __future__ import annotations

import pytest

from tuneforge.engine.planner import LINEAR_MODULES, plan_memory

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

UNDERSHOOT = 0.02
OVERSHOOT = 0.05
VOCAB, SEQ, BATCH = 4096, 256, 2


def _peak_tensor_bytes(fn) -> int:
    """Peak of live CPU tensor bytes allocated while ``fn`` runs (relative to its start)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    assert events, "the profiler recorded no allocations"
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _resident_bytes(model, optimizer) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def _measure(config, method: str, checkpointing: bool, lora_dropout: float) -> int:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if method == "lora":
        peft = pytest.importorskip("peft")
        lora = peft.LoraConfig(r=8, target_modules=list(LINEAR_MODULES), lora_dropout=lora_dropout)
        model = peft.get_peft_model(model, lora)
    if checkpointing:
        model.gradient_checkpointing_enable()
        if method == "lora":
            model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        # The output (and its logits) stays alive through backward, as in loops that log from it:
        # the worst case, which the planner assumes.
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer state exists from the second step on: measure that steady state
    return _resident_bytes(model, optimizer) + _peak_tensor_bytes(step)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "checkpointing", "lora_dropout", "attention"),
    [
        ("full", False, 0.0, "sdpa"),
        ("full", True, 0.0, "sdpa"),
        ("full", False, 0.0, "eager"),
        ("lora", False, 0.1, "sdpa"),
        ("lora", True, 0.0, "sdpa"),
    ],
    ids=["full", "full-checkpointing", "full-eager", "lora-dropout", "lora-checkpointing"],
)
def test_estimate_brackets_measured_peak(method, checkpointing, lora_dropout, attention):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=SEQ, tie_word_embeddings=False,
        attn_implementation=attention,
    )
    measured = _measure(config, method, checkpointing, lora_dropout)
    plan = plan_memory(
        config, method, SEQ, BATCH, 1, 2**40, dtype="fp32", gradient_checkpointing=checkpointing,
        lora_r=8, lora_dropout=lora_dropout, attention=attention,
    )
    assert plan.activations > 0.4 * plan.total, "activations should weigh for the check to mean something"
    assert plan.total >= measured * (1 - UNDERSHOOT), f"plan {plan.total} optimistic vs measured {measured}"
    assert plan.total <= measured * (1 + OVERSHOOT) + plan.gradients, f"plan {plan.total} vs measured {measured}"
