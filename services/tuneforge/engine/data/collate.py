"""Alias module: ``from tuneforge.engine.data.collate import make_collator`` (lives in ``packing``).

Public API:
    make_collator(tokenizer, *, packing=False, pad_to_multiple_of=None): see ``data.packing``.
"""

from tuneforge.engine.data.packing import collate, collate_preference, make_collator

__all__ = ["collate", "collate_preference", "make_collator"]
