import numpy as np
import pytest

from agents.prompting import build_completion
from agents.trie import TitleTrie


def make():
    # items: 0 = [1, 2, 9], 1 = [1, 3, 4, 9], 2 = [5, 9], 3 = [1, 3, 6, 9]
    return TitleTrie([[1, 2, 9], [1, 3, 4, 9], [5, 9], [1, 3, 6, 9]])


def test_walk_reaches_each_item_leaf():
    trie = make()
    for item, seq in enumerate(trie.sequences):
        node = trie.walk(seq)
        assert trie.leaf_item[node] == item
        assert trie.order[trie.lo[node]] == item and trie.hi[node] == trie.lo[node] + 1
    assert trie.walk([7]) == -1


def test_allowed_and_masking():
    trie = make()
    tokens, _ = trie.allowed(0)
    assert sorted(tokens.tolist()) == [1, 5]
    node1 = trie.walk([1])
    assert sorted(trie.allowed(node1)[0].tolist()) == [2, 3]
    masked = np.array([True, False, False, False])
    counts = trie.alive_counts(masked)
    assert trie.allowed(node1, counts)[0].tolist() == [3]
    # masking items 1 and 3 removes the whole [1, 3] branch
    counts = trie.alive_counts(np.array([False, True, False, True]))
    assert trie.allowed(node1, counts)[0].tolist() == [2]
    counts = trie.alive_counts(np.array([True, True, False, True]))
    assert trie.allowed(0, counts)[0].tolist() == [5]
    assert trie.has_items(counts)
    assert not trie.has_items(trie.alive_counts(np.ones(4, bool)))
    assert trie.alive_counts(np.zeros(4, bool)) is None


def test_forced_path_stops_at_branch_or_leaf():
    trie = make()
    node5 = trie.walk([5])
    assert [t for t, _ in trie.forced_path(node5)] == [9]
    node13 = trie.walk([1, 3])
    assert trie.forced_path(node13) == []
    counts = trie.alive_counts(np.array([False, True, False, False]))
    assert [t for t, _ in trie.forced_path(node13, counts)] == [6, 9]


@pytest.mark.parametrize(
    "seqs, match",
    [
        ([[1, 2], [1, 2, 3]], "prefix"),
        ([[1, 2, 3], [1, 2]], "prefix"),
        ([[1, 2], [1, 2]], "same tokens"),
        ([[1], []], "empty"),
        ([], "empty"),
    ],
)
def test_bad_sequences_raise(seqs, match):
    with pytest.raises(ValueError, match=match):
        TitleTrie(seqs)


def test_from_tokenizer_covers_every_title(tiny_tokenizer, default_world):
    comps = [build_completion(t) for t in default_world.titles]
    trie = TitleTrie.from_tokenizer(tiny_tokenizer, comps)
    assert trie.n_items == default_world.n_items
    ids = tiny_tokenizer(comps, add_special_tokens=False).input_ids
    for item in range(0, default_world.n_items, 37):
        assert trie.leaf_item[trie.walk(ids[item])] == item
    assert sorted(trie.order.tolist()) == list(range(default_world.n_items))


def test_title_tokens_are_the_completions_tokens(tiny_tokenizer, default_world):
    """The trie holds exactly ``encode_completion`` of each item's completion: the tokens training scores."""
    from agents.prompting import encode_completion

    comps = [build_completion(t) for t in default_world.titles]
    trie = TitleTrie.from_tokenizer(tiny_tokenizer, comps)
    assert trie.sequences == [encode_completion(tiny_tokenizer, c) for c in comps]
