"""Word-level instruction vocabulary for the small presets' text encoder (numpy only).

The vocabulary is built from the training instructions and stored in the checkpoint, so inference tokenises
exactly as training did. Token ids: 0 = padding, 1 = start (always at position 0, so no row is all padding),
2 = unknown word, then the words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, START, UNKNOWN = "<pad>", "<start>", "<unk>"
SPECIALS = (PAD, START, UNKNOWN)
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: 'Push the RED block.' -> ['push', 'the', 'red', 'block']."""
    return _WORD.findall(text.lower())


class Vocabulary:
    def __init__(self, tokens: Sequence[str], max_len: int) -> None:
        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {list(tokens[:3])}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (start token + a word), got {max_len}")
        self.tokens = list(tokens)
        self.max_len = int(max_len)
        self.index = {w: i for i, w in enumerate(self.tokens)}

    @classmethod
    def build(cls, instructions: Iterable[str], max_len: int, max_size: int) -> Vocabulary:
        """Every word of the instructions, in first-seen order; refuses to silently drop words."""
        seen: dict[str, None] = {}
        for text in instructions:
            for w in words(text):
                seen.setdefault(w, None)
        tokens = [*SPECIALS, *seen]
        if len(tokens) > max_size:
            raise ValueError(f"the instructions have {len(tokens) - 3} distinct words but the preset's vocab_size is "
                             f"{max_size}; raise vocab_size (e.g. --override vocab_size={len(tokens)})")
        return cls(tokens, max_len)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int64 (B, max_len): start token, word ids (unknown words -> 2), zero padding; long texts are cut."""
        out = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [1] + [self.index.get(w, 2) for w in words(text)]
            ids = ids[: self.max_len]
            out[row, : len(ids)] = ids
        return out

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self.index]


class UnknownInstructionError(ValueError):
    """An instruction a cached-text policy has no text embedding for."""


class InstructionVocabulary:
    """The instructions of a policy whose text embeddings are cached (the cosmos backbone: the 7B text encoder
    is not loaded for serving). Same interface as Vocabulary; a "token" is the instruction's row in the cache.
    Instructions match after whitespace and case folding."""

    def __init__(self, instructions: Sequence[str]) -> None:
        self.tokens = list(instructions)
        self.max_len = 1
        self.index = {self.key(s): i for i, s in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens) or not self.tokens:
            raise ValueError(f"cached instructions must be a non-empty list of distinct strings, got {self.tokens}")

    @staticmethod
    def key(text: str) -> str:
        return " ".join(text.lower().split())

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int64 (B, 1): each instruction's index; an unseen one raises UnknownInstructionError listing the known."""
        out = np.zeros((len(texts), 1), dtype=np.int64)
        for row, text in enumerate(texts):
            if self.key(text) not in self.index:
                raise UnknownInstructionError(
                    f"instruction {text!r} has no cached text embedding; this policy knows {self.tokens} (serve with "
                    f"--text-encoder DIR to embed new instructions)")
            out[row, 0] = self.index[self.key(text)]
        return out

    def unknown_words(self, text: str) -> list[str]:
        return [] if self.key(text) in self.index else [text]
