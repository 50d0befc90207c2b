"""From canonical records to tokens, correctly.

Public API (see each module's docstring for details):
    records:  RecordKind, Message, Record, read_records(path), records_from_dicts(rows)
    tokenize: Example, PreferencePair, IGNORE_INDEX, CHATML_TEMPLATE, ensure_chat_template,
              ensure_pad_token, check_pad_token, tokenize_sft, tokenize_preference, tokenize_pretrain
    packing:  pack, collate, collate_preference, check_targets, NoTrainableTokens, pad_fraction,
              make_collator, pack_rows, example_from_row, row_from_example
    sampling: epoch_order, split_indices, mix

Typical SFT flow::

    records = read_records(path)
    examples = tokenize_sft(records, tokenizer, max_len=spec.data.max_seq_length,
                            assistant_only_loss=spec.data.assistant_only_loss)
    if spec.data.packing:
        examples = pack(examples, spec.data.max_seq_length)
    order = epoch_order(len(examples), spec.hyperparameters.seed, epoch)
    batch = collate([examples[i] for i in order[k : k + mbs]], tokenizer.pad_token_id)
    loss = model(**{k: v for k, v in batch.items() if k != "cu_seq_lens"}, use_cache=False).loss

Nothing here imports torch except ``collate``/``collate_preference`` (lazily).
"""

from tuneforge.engine.data.packing import (
    NoTrainableTokens,
    check_targets,
    collate,
    collate_preference,
    example_from_row,
    make_collator,
    pack,
    pack_rows,
    pad_fraction,
    row_from_example,
)
from tuneforge.engine.data.records import Message, Record, RecordKind, read_records, records_from_dicts
from tuneforge.engine.data.sampling import epoch_order, mix, split_indices
from tuneforge.engine.data.tokenize import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    Example,
    PreferencePair,
    check_pad_token,
    ensure_chat_template,
    ensure_pad_token,
    tokenize_preference,
    tokenize_pretrain,
    tokenize_sft,
)

__all__ = [
    "CHATML_TEMPLATE",
    "IGNORE_INDEX",
    "Example",
    "Message",
    "NoTrainableTokens",
    "PreferencePair",
    "Record",
    "RecordKind",
    "check_pad_token",
    "check_targets",
    "collate",
    "collate_preference",
    "ensure_chat_template",
    "ensure_pad_token",
    "epoch_order",
    "example_from_row",
    "make_collator",
    "mix",
    "pack",
    "pack_rows",
    "pad_fraction",
    "read_records",
    "records_from_dicts",
    "row_from_example",
    "split_indices",
    "tokenize_preference",
    "tokenize_pretrain",
    "tokenize_sft",
]
