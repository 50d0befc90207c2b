"""Near-duplicate detection: MinHash signatures computed in batches, indexed by datasketch LSH.

Signatures are exactly datasketch's ``MinHash(num_perm, seed, scheme="affine32",
hashfunc=xxh32)`` signatures (same shingles, hash function, permutations), computed for a whole
batch of documents in one numpy pass instead of one ``update_batch`` per document. The LSH index
is ``datasketch.MinHashLSH`` (banding chosen by datasketch for the threshold). Candidates are
verified by the estimated Jaccard similarity of the signatures before a row is called a
duplicate; the first occurrence is kept.

Memory: the LSH tables plus one ``num_perm`` x uint32 signature per kept document (512 bytes at
128 permutations); nothing else grows with the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

SCHEME = "affine32"
_SUB_BATCH_SHINGLES = 60_000
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-gram shingles of a text, lower-cased; a short text is one shingle."""
    words = text.lower().split()
    if len(words) <= ngram:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]


def hash32(value: bytes) -> int:
    """The 32-bit shingle hash (also given to datasketch baselines as ``hashfunc``)."""
    return xxhash.xxh32_intdigest(value)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class _Signature:
    """What MinHashLSH needs from a MinHash: hash values, length and scheme."""

    __slots__ = ("hashvalues",)
    scheme = SCHEME

    def __init__(self, hashvalues: np.ndarray) -> None:
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


class SignatureBatcher:
    """Computes datasketch-compatible MinHash signatures for many documents at once."""

    def __init__(self, num_perm: int, ngram: int, seed: int = 1) -> None:
        reference = MinHash(num_perm=num_perm, seed=seed, hashfunc=hash32, scheme=SCHEME)
        a, b = reference.permutations
        self.a = np.asarray(a, dtype=np.uint32)[:, None]
        self.b = np.asarray(b, dtype=np.uint32)[:, None]
        self.num_perm = num_perm
        self.ngram = ngram

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Return a (len(texts), num_perm) uint32 array of signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        start = 0
        while start < len(texts):
            hashes: list[int] = []
            offsets: list[int] = []
            end = start
            while end < len(texts) and (end == start or len(hashes) < _SUB_BATCH_SHINGLES):
                offsets.append(len(hashes))
                hashes.extend(hash32(s) for s in shingles(texts[end], self.ngram))
                end += 1
            hv = _fmix32(np.asarray(hashes, dtype=np.uint32))
            with np.errstate(over="ignore"):
                phv = hv[None, :] * self.a + self.b
            out[start:end] = np.minimum.reduceat(phv, np.asarray(offsets), axis=1).T
            start = end
        return out


@dataclass
class NearDupIndex:
    """Streaming near-duplicate filter: ``check`` returns the kept key a document duplicates.

    Attributes:
        clusters: kept key -> keys found to duplicate it.
    """

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    clusters: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.batcher = SignatureBatcher(self.num_perm, self.ngram, self.seed)
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._signatures: dict[int, np.ndarray] = {}

    def check_batch(self, keys: Sequence[int], texts: Sequence[str]) -> list[int | None]:
        """For each document, the key of the earlier document it duplicates, or None (then it
        is indexed as a new original)."""
        sigs = self.batcher.signatures(texts)
        result: list[int | None] = []
        for key, sig in zip(keys, sigs, strict=True):
            match = self._best_match(sig)
            if match is None:
                signature = _Signature(sig)
                self.lsh.insert(key, signature, check_duplication=False)
                self._signatures[key] = sig
            else:
                self.clusters.setdefault(match, []).append(key)
            result.append(match)
        return result

    def _best_match(self, sig: np.ndarray) -> int | None:
        best, best_score = None, self.threshold
        for candidate in self.lsh.query(_Signature(sig)):
            score = float(np.count_nonzero(self._signatures[candidate] == sig)) / self.num_perm
            if score >= best_score:
                best, best_score = candidate, score
        return best
