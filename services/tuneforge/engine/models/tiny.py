"""A tiny Llama and its tokenizer, built from a config and trained on the fly (for tests and demos).

Public API:
    build_tiny_model(out_dir, *, seed=0, vocab_size=512, hidden_size=64, num_layers=2, corpus=None)
        Writes a Hugging Face folder into ``out_dir`` and returns it:
        - ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 2 x hidden,
          512 positions) saved as safetensors;
        - a byte-level BPE tokenizer trained with ``tokenizers`` on ``corpus`` (a built-in English and
          chat corpus when None), wrapped in ``PreTrainedTokenizerFast`` with a ChatML chat template.
          Special tokens: ``<|endoftext|>`` (eos), ``<|pad|>`` (pad, distinct from eos),
          ``<|im_start|>``, ``<|im_end|>`` (end of turn; also a generation stop token).
    TINY_SPECIAL_TOKENS, CHATML_TEMPLATE: the token strings and the chat template used.

The same arguments give byte-identical weights and tokenizer files (the global torch RNG is left
untouched). Nothing is downloaded.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TINY_SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)

# ChatML, as used by Qwen2 and SmolLM2; `add_generation_prompt` opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SUBJECTS = ["the cat", "a robot", "my friend", "the teacher", "our model", "the river", "a student"]
_VERBS = ["reads", "writes", "sees", "builds", "learns", "answers", "follows", "counts"]
_OBJECTS = ["a book", "the question", "numbers", "the map", "a poem", "the answer", "small tokens"]
_EXTRA = (
    "Tokenizers split text into pieces; models learn which piece comes next. Every morning the baker "
    "opens the shop, weighs flour, water and salt, and bakes bread before seven o'clock. Mountains, "
    "valleys, forests and oceans cover the planet. Quick brown foxes jump over lazy dogs. Numbers: "
    "zero one two three four five six seven eight nine ten eleven twelve hundred thousand million."
)
_QUESTIONS = ["What is two plus two?", "Name a colour.", "Say hello.", "What is the capital of France?"]
_ANSWERS = ["Four.", "Blue.", "Hello!", "Paris is the capital of France."]


def _default_corpus(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(400):
        yield f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
    words = _EXTRA.split()
    for _ in range(200):
        yield " ".join(rng.sample(words, 8)) + f" {rng.randint(0, 9999)}"
    for q, a in zip(_QUESTIONS, _ANSWERS, strict=True):
        yield f"system\nYou are helpful.\nuser\n{q}\nassistant\n{a}\n"


def _train_tokenizer(corpus: Iterable[str], vocab_size: int):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets exact, which assistant-only masking relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def _wrap_tokenizer(tok):  # -> PreTrainedTokenizerFast
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=512,
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build a tiny Llama with a freshly trained byte-level BPE tokenizer and save it.

    Args:
        out_dir: folder to write (created if needed); existing files of the same name are replaced.
        seed: seeds the default corpus and the weight initialisation.
        vocab_size: target BPE vocabulary size (the model's vocabulary is the trained size).
        hidden_size: model width; intermediate size is twice this, 4 heads, 2 KV heads.
        num_layers: number of decoder layers.
        corpus: training texts for the tokenizer; a built-in corpus when None.

    Returns:
        ``out_dir``, a Hugging Face folder loadable with ``from_pretrained`` (safetensors).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _wrap_tokenizer(_train_tokenizer(corpus or _default_corpus(seed), vocab_size))
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end_id, eos_id], pad_token_id=pad_id, bos_token_id=None
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
