"""A token trie over catalog titles: which tokens may come next so that the text stays a catalog title.

The trie is stored as flat numpy arrays (CSR children lists), with the items numbered in depth-first
order so that every node's subtree is one contiguous range of that order. Masking a set of items (those
already recommended in a session) is then a prefix sum per session, not a rebuild: a child token is allowed
while its subtree still holds an unmasked item.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from agents.prompting import encode_completions

__all__ = ["TitleTrie"]


class TitleTrie:
    """A prefix tree over the token sequences of item completions.

    Args:
        sequences: Per item (item id = position), its token ids; at least one token each, and no sequence
            may be a prefix of another (the completion terminator guarantees that for real tokenizers).

    Attributes:
        n_items: Number of items.
        n_nodes: Number of nodes (the root is node 0).
        child_ptr: ``(n_nodes + 1,)``; the children of node ``n`` are ``child_ptr[n]:child_ptr[n + 1]``.
        child_token: Token id of each child edge.
        child_node: Node each child edge leads to.
        leaf_item: Per node, the item whose sequence ends there, or ``-1``.
        depth: Per node, its distance from the root.
        lo, hi: Per node, its subtree as the range ``order[lo:hi]`` of the depth-first item order.
        order: Item ids in depth-first order; ``rank[item]`` is its position there.
    """

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        seqs = [list(map(int, s)) for s in sequences]
        if not seqs:
            raise ValueError("`sequences` is empty; a trie needs at least one item.")
        # Build with dicts (fast in CPython for ~10^5 edges), then freeze into arrays.
        children: list[dict[int, int]] = [{}]
        leaf: list[int] = [-1]
        for item, seq in enumerate(seqs):
            if not seq:
                raise ValueError(f"item {item} has an empty token sequence; every completion needs at least one token.")
            node = 0
            for tok in seq:
                nxt = children[node].get(tok)
                if nxt is None:
                    if leaf[node] >= 0:
                        raise ValueError(
                            f"the tokens of item {leaf[node]} are a prefix of those of item {item}; "
                            "end every completion with a terminator (agents.prompting.build_completion)."
                        )
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf.append(-1)
                node = nxt
            if leaf[node] >= 0:
                raise ValueError(f"items {leaf[node]} and {item} have the same tokens {seq}; titles must tokenize distinctly.")
            if children[node]:
                raise ValueError(
                    f"the tokens of item {item} are a prefix of another item's; "
                    "end every completion with a terminator (agents.prompting.build_completion)."
                )
            leaf[node] = item

        n_nodes = len(children)
        counts = [len(c) for c in children]
        child_ptr = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=child_ptr[1:])
        child_token = np.fromiter((t for c in children for t in c), dtype=np.int64, count=int(child_ptr[-1]))
        child_node = np.fromiter((n for c in children for n in c.values()), dtype=np.int64, count=int(child_ptr[-1]))

        # Depth-first numbering (iterative, on plain lists: numpy scalars are slow here), giving each node its
        # contiguous item range.
        lo = [0] * n_nodes
        hi = [0] * n_nodes
        depth = [0] * n_nodes
        order: list[int] = []
        stack: list[int] = [0]  # node, or ~node to close it
        while stack:
            node = stack.pop()
            if node < 0:
                hi[~node] = len(order)
                continue
            lo[node] = len(order)
            if leaf[node] >= 0:
                order.append(leaf[node])
            stack.append(~node)
            kids = list(children[node].values())
            d = depth[node] + 1
            for ch in reversed(kids):
                depth[ch] = d
                stack.append(ch)
        lo, hi, depth = (np.asarray(x, dtype=np.int64) for x in (lo, hi, depth))

        self.n_items = len(seqs)
        self.n_nodes = n_nodes
        self.child_ptr = child_ptr
        self.child_token = child_token
        self.child_node = child_node
        self.leaf_item = np.asarray(leaf, dtype=np.int64)
        self.depth = depth
        self.lo = lo
        self.hi = hi
        self.order = np.asarray(order, dtype=np.int64)
        self.rank = np.empty(self.n_items, dtype=np.int64)
        self.rank[self.order] = np.arange(self.n_items)
        self.sequences = seqs

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, completions: Sequence[str]) -> "TitleTrie":
        """Build from completion texts, tokenized as training tokenizes them
        (:func:`agents.prompting.encode_completions`).

        Args:
            tokenizer: A Hugging Face tokenizer.
            completions: One completion per item (``agents.prompting.build_completion(title)``).
        """
        return cls(encode_completions(tokenizer, completions))

    # ------------------------------------------------------------------ queries
    def alive_counts(self, masked: np.ndarray | None) -> np.ndarray | None:
        """Prefix sums of unmasked items in depth-first order, for :meth:`allowed`.

        Args:
            masked: ``(n_items,)`` bool, True for items that may not be produced (or ``None``: nothing masked).

        Returns:
            ``(n_items + 1,)`` int prefix sums, or ``None`` when nothing is masked.
        """
        if masked is None or not masked.any():
            return None
        alive = ~masked[self.order]
        out = np.zeros(self.n_items + 1, dtype=np.int64)
        np.cumsum(alive, out=out[1:])
        return out

    def allowed(self, node: int, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next tokens allowed at ``node`` and the nodes they lead to.

        Args:
            node: A trie node.
            counts: From :meth:`alive_counts` (children whose items are all masked are left out).

        Returns:
            ``(tokens, nodes)``, int64 arrays (empty when nothing is allowed).
        """
        a, b = self.child_ptr[node], self.child_ptr[node + 1]
        tokens = self.child_token[a:b]
        nodes = self.child_node[a:b]
        if counts is not None:
            keep = counts[self.hi[nodes]] > counts[self.lo[nodes]]
            tokens, nodes = tokens[keep], nodes[keep]
        return tokens, nodes

    def forced_path(self, node: int, counts: np.ndarray | None = None) -> list[tuple[int, int]]:
        """The ``(token, node)`` steps that follow ``node`` without choice (one allowed child each), up to a leaf
        or a branching node."""
        path: list[tuple[int, int]] = []
        while self.leaf_item[node] < 0:
            tokens, nodes = self.allowed(node, counts)
            if tokens.size != 1:
                break
            node = int(nodes[0])
            path.append((int(tokens[0]), node))
        return path

    def has_items(self, counts: np.ndarray | None) -> bool:
        """Whether any item is left unmasked."""
        return counts is None or bool(counts[-1] > 0)

    def walk(self, tokens: Sequence[int]) -> int:
        """The node reached from the root by ``tokens``; ``-1`` when they leave the trie."""
        node = 0
        for tok in tokens:
            a, b = self.child_ptr[node], self.child_ptr[node + 1]
            hit = np.flatnonzero(self.child_token[a:b] == int(tok))
            if hit.size == 0:
                return -1
            node = int(self.child_node[a + hit[0]])
        return node

    def __repr__(self) -> str:
        return f"<TitleTrie {self.n_items} items, {self.n_nodes} nodes>"
