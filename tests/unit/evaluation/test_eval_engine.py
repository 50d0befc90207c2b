"""engine/evaluate against manual transformers computations on the tiny model."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tuneforge.engine.evaluate import chat, generation, loglikelihood, perplexity  # noqa: E402
from tuneforge.engine.evaluate.loading import load_model  # noqa: E402

TEXTS = [
    "the cat reads a book.",
    "a robot builds the map. Quick brown foxes jump over lazy dogs. Numbers: one two three.",
    "my friend answers the question",
    "Mountains, valleys, forests and oceans cover the planet. " * 6,
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def _manual_nll(model, ids):
    """Summed NLL of ids[1:] given the prefix, with transformers' own loss."""
    t = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=t, labels=t).loss.item()
    return loss * (len(ids) - 1), len(ids) - 1


def test_perplexity_equals_manual_transformers_loss(loaded):
    enc = perplexity.encode_texts(loaded.tokenizer, TEXTS)
    res = perplexity.perplexity(loaded.model, enc, max_length=512, batch_size=3, pad_id=loaded.pad_id)
    manual = [_manual_nll(loaded.model, e.ids) for e in enc]
    total = sum(n for n, _ in manual)
    count = sum(c for _, c in manual)
    assert res.tokens == count
    assert res.mean_loss == pytest.approx(total / count, rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    for (nll, c), (m_nll, m_c) in zip(res.per_example, manual, strict=True):
        assert c == m_c
        assert nll == pytest.approx(m_nll, rel=1e-5)


def test_sliding_window_equals_hf_guide_loop(loaded):
    """The HF perplexity guide's loop, token-weighted, on a text longer than the window."""
    ids = perplexity.encode_texts(loaded.tokenizer, [TEXTS[3]])[0].ids
    max_length, stride = 32, 12
    assert len(ids) > 2 * max_length
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    seq = torch.tensor([ids])
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        input_ids = seq[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = loaded.model(input_ids, labels=target_ids).loss
        num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()  # labels are shifted inside
        nll_sum += loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end = end
        if end == len(ids):
            break
    enc = perplexity.encode_texts(loaded.tokenizer, [TEXTS[3]])
    res = perplexity.perplexity(loaded.model, enc, max_length=max_length, stride=stride, pad_id=loaded.pad_id)
    assert res.tokens == n_tokens == len(ids) - 1  # overlap: every token but the first is scored once
    assert res.mean_loss == pytest.approx(nll_sum / n_tokens, rel=1e-5)


def test_batched_perplexity_equals_one_by_one(loaded):
    enc = perplexity.encode_texts(loaded.tokenizer, TEXTS)
    batched = perplexity.perplexity(loaded.model, enc, max_length=24, stride=10, batch_size=8, pad_id=loaded.pad_id)
    single = perplexity.perplexity(loaded.model, enc, max_length=24, stride=10, batch_size=1, pad_id=loaded.pad_id)
    assert batched.tokens == single.tokens
    assert batched.nll_sum == pytest.approx(single.nll_sum, rel=1e-5)


def test_stride_larger_than_window_is_rejected(loaded):
    from tuneforge.common.errors import InvalidInput

    enc = perplexity.encode_texts(loaded.tokenizer, TEXTS[:1])
    with pytest.raises(InvalidInput, match="stride"):
        perplexity.perplexity(loaded.model, enc, max_length=8, stride=9)


CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]


def test_chat_scores_assistant_tokens_only(loaded):
    tok = loaded.tokenizer
    ids, mask = chat.encode_chat(tok, CONVERSATION)
    scored_text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert scored_text == "Four.<|im_end|>\nBlue.<|im_end|>\n"
    # Manual: labels -100 outside assistant tokens, transformers' loss.
    labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask, strict=True)]])
    with torch.no_grad():
        manual = loaded.model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
    res = perplexity.perplexity(loaded.model, [perplexity.Encoded(ids, mask)], max_length=512, pad_id=loaded.pad_id)
    assert res.tokens == sum(mask)
    assert res.mean_loss == pytest.approx(manual, rel=1e-5)


def test_chat_without_assistant_turn_is_rejected(loaded):
    from tuneforge.common.errors import InvalidInput

    with pytest.raises(InvalidInput, match="no assistant message"):
        chat.encode_chat(loaded.tokenizer, CONVERSATION[:2])


def test_loglikelihood_equals_manual_sum_and_batches_match(loaded):
    tok, model = loaded.tokenizer, loaded.model
    requests = [("the cat reads", " a book."), ("Numbers: one two", " three"), ("", "hello there"), ("a robot ", "builds")]
    batched = loglikelihood.loglikelihoods(model, tok, requests, max_length=512, batch_size=4)
    single = loglikelihood.loglikelihoods(model, tok, requests, max_length=512, batch_size=1)
    for b, s in zip(batched, single, strict=True):
        assert b.logprob == pytest.approx(s.logprob, rel=1e-5)
    # Manual: log p(continuation | context) from one forward pass on the joined ids.
    ctx, cont = loglikelihood.encode_pair(tok, *requests[0])
    assert tok.decode(cont) == " a book."
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits.log_softmax(-1)[0]
    manual = sum(logits[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert batched[0].logprob == pytest.approx(manual, rel=1e-5)
    # Trailing context whitespace moves to the continuation, as the harness does.
    assert loglikelihood.encode_pair(tok, "a robot ", "builds") == loglikelihood.encode_pair(tok, "a robot", " builds")


def test_multiple_choice_loglikelihoods_group_options(loaded):
    items = [("the cat", [" reads", " zzqx"]), ("Numbers: one two", [" three", " four", " five"])]
    lls = loglikelihood.multiple_choice_loglikelihoods(loaded.model, loaded.tokenizer, items, max_length=512)
    assert [len(x) for x in lls] == [2, 3]
    flat = loglikelihood.loglikelihoods(
        loaded.model, loaded.tokenizer, [("the cat", " zzqx")], max_length=512
    )
    assert lls[0][1] == pytest.approx(flat[0].logprob, rel=1e-5)


PROMPTS = [
    "the cat reads",
    [{"role": "user", "content": "Say hello."}],
    "Mountains, valleys, forests and oceans cover the planet. Every morning",
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Name a colour."}],
]


def test_batched_greedy_generation_equals_one_by_one(loaded):
    settings = generation.GenerationSettings(max_new_tokens=12, batch_size=2)
    text_prompts = [PROMPTS[0], PROMPTS[2]]
    chat_prompts = [PROMPTS[1], PROMPTS[3]]
    for group in (text_prompts, chat_prompts):
        batched = generation.generate(loaded.model, loaded.tokenizer, group, settings)
        single = [
            generation.generate(loaded.model, loaded.tokenizer, [p], settings)[0] for p in group
        ]
        assert [g.text for g in batched] == [g.text for g in single]
        assert all(g.new_tokens <= 12 for g in batched)
    assert batched[0].prompt.endswith("<|im_start|>assistant\n")


def test_seeded_sampling_is_reproducible_and_seed_dependent(loaded):
    s1 = generation.GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, seed=7, batch_size=2)
    a = [g.text for g in generation.generate(loaded.model, loaded.tokenizer, PROMPTS, s1)]
    b = [g.text for g in generation.generate(loaded.model, loaded.tokenizer, PROMPTS, s1)]
    other = generation.GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, seed=8, batch_size=2)
    c = [g.text for g in generation.generate(loaded.model, loaded.tokenizer, PROMPTS, other)]
    assert a == b
    assert a != c


def test_stop_sequences_cut_generation(loaded):
    base = generation.GenerationSettings(max_new_tokens=20)
    free = generation.generate(loaded.model, loaded.tokenizer, [PROMPTS[0]], base)[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = generation.generate(
        loaded.model, loaded.tokenizer, [PROMPTS[0]], generation.GenerationSettings(max_new_tokens=20, stop=(stop,))
    )[0]
    assert cut.stopped_by == "stop_sequence"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.new_tokens < free.new_tokens


def test_generation_settings_report_every_bad_field():
    from tuneforge.common.errors import InvalidInput

    bad = generation.GenerationSettings(max_new_tokens=0, batch_size=0, do_sample=True, temperature=0)
    with pytest.raises(InvalidInput) as info:
        bad.check()
    assert {v.field for v in info.value.violations} == {
        "generation.max_new_tokens",
        "generation.batch_size",
        "generation.temperature",
    }
