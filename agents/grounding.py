"""Free text -> catalog item, for decoding that is not constrained to titles.

Stages, first hit wins: the exact title; the normalized title (case, punctuation and spacing ignored);
a fuzzy match of the normalized text (``difflib`` ratio at least ``fuzzy_cutoff``); the nearest
neighbour of the text in an embedding space (the LLM's own input embeddings, passed in as a function so
this module needs no torch). Text that is empty after normalization is a failure; so is text that no stage
maps (no embedding function given). Every outcome is counted in :attr:`TitleGrounder.stats`.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["GROUNDING_METHODS", "Grounding", "TitleGrounder", "normalize_title"]

#: The outcomes a grounding can have, in the order they are tried ("failed": nothing matched).
GROUNDING_METHODS = ("exact", "normalized", "fuzzy", "embedding", "failed")

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalize_title(text: str) -> str:
    """Lower case, accents and punctuation dropped, whitespace collapsed: ``" The  Matrix!"`` -> ``"the matrix"``."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


@dataclass(frozen=True)
class Grounding:
    """Where a piece of free text landed.

    Attributes:
        item: The item id (``-1`` only when ``method == "failed"`` and no fallback was possible).
        method: One of :data:`GROUNDING_METHODS`.
        score: Similarity of the match (1.0 for exact/normalized, difflib ratio, or cosine similarity).
    """

    item: int
    method: str
    score: float


class TitleGrounder:
    """Maps generated text to catalog items.

    Args:
        titles: The catalog titles (item id = position).
        embed: Optional function from a list of texts to an ``(n, d)`` array of embeddings; enables the
            nearest-neighbour stage. The catalog is embedded once, at construction.
        fuzzy_cutoff: Minimum ``difflib.SequenceMatcher`` ratio of a fuzzy match, in (0, 1].
    """

    def __init__(
        self,
        titles: Sequence[str],
        embed: Callable[[list[str]], np.ndarray] | None = None,
        fuzzy_cutoff: float = 0.8,
    ) -> None:
        if not 0.0 < float(fuzzy_cutoff) <= 1.0:
            raise ValueError(f"`fuzzy_cutoff` must be in (0, 1], got {fuzzy_cutoff!r}.")
        self.titles = tuple(titles)
        self.fuzzy_cutoff = float(fuzzy_cutoff)
        self._exact = {t: i for i, t in enumerate(self.titles)}
        self._norm_titles = [normalize_title(t) for t in self.titles]
        self._normalized: dict[str, int] = {}
        for i, n in enumerate(self._norm_titles):
            self._normalized.setdefault(n, i)
        self._embed = embed
        self._catalog: np.ndarray | None = None
        if embed is not None:
            self._catalog = self._unit(np.asarray(embed(list(self.titles)), dtype=np.float32))
            if self._catalog.shape[0] != len(self.titles):
                raise ValueError(f"`embed` returned {self._catalog.shape[0]} rows for {len(self.titles)} titles.")
        self.stats = {m: 0 for m in GROUNDING_METHODS}

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    @property
    def failure_rate(self) -> float:
        """Share of groundings that failed (0.0 before any)."""
        total = sum(self.stats.values())
        return self.stats["failed"] / total if total else 0.0

    def ground(self, text: str, masked: np.ndarray | None = None) -> Grounding:
        """Map one text to an item; items with ``masked[item]`` True are never returned.

        Args:
            text: The generated text (a title, ideally).
            masked: Optional ``(n_items,)`` bool array of excluded items (e.g. already recommended).
        """
        result = self._ground(text, masked)
        self.stats[result.method] += 1
        return result

    def _ok(self, item: int, masked: np.ndarray | None) -> bool:
        return masked is None or not bool(masked[item])

    def _ground(self, text: str, masked: np.ndarray | None) -> Grounding:
        stripped = text.strip()
        item = self._exact.get(stripped)
        if item is not None and self._ok(item, masked):
            return Grounding(item, "exact", 1.0)
        norm = normalize_title(stripped)
        if not norm:
            return Grounding(-1, "failed", 0.0)
        item = self._normalized.get(norm)
        if item is not None and self._ok(item, masked):
            return Grounding(item, "normalized", 1.0)
        candidates = [n for n in difflib.get_close_matches(norm, self._normalized.keys(), n=8, cutoff=self.fuzzy_cutoff)]
        for cand in candidates:
            item = self._normalized[cand]
            if self._ok(item, masked):
                return Grounding(item, "fuzzy", difflib.SequenceMatcher(None, norm, cand).ratio())
        if self._catalog is not None:
            q = self._unit(np.asarray(self._embed([stripped]), dtype=np.float32).reshape(1, -1))[0]
            sims = self._catalog @ q
            if masked is not None:
                sims = np.where(masked, -np.inf, sims)
            best = int(np.argmax(sims))
            if np.isfinite(sims[best]):
                return Grounding(best, "embedding", float(sims[best]))
        return Grounding(-1, "failed", 0.0)
