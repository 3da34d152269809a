import numpy as np
import pytest

from agents.grounding import TitleGrounder, normalize_title

TITLES = ["The Matrix", "Foggy Lighthouse", "Iron Strike 2", "Café Society"]


def test_normalize():
    assert normalize_title("  The   MATRIX!! ") == "the matrix"
    assert normalize_title("Café-Society") == "cafe society"


def test_exact_normalized_fuzzy():
    g = TitleGrounder(TITLES)
    assert (g.ground("Foggy Lighthouse").item, g.ground("Foggy Lighthouse").method) == (1, "exact")
    r = g.ground(" foggy lighthouse. ")
    assert (r.item, r.method) == (1, "normalized")
    r = g.ground("cafe society")
    assert (r.item, r.method) == (3, "normalized")
    r = g.ground("Fogy Lighthose")
    assert (r.item, r.method) == (1, "fuzzy") and 0.8 <= r.score < 1
    assert g.ground("Iron Strike 2\n").item == 2


def test_failure_is_counted():
    g = TitleGrounder(TITLES)
    assert g.ground("zzzz qqqq").method == "failed"
    assert g.ground("   ").method == "failed"
    g.ground("The Matrix")
    assert g.stats["failed"] == 2 and g.stats["exact"] == 1
    assert g.failure_rate == pytest.approx(2 / 3)


def test_embedding_fallback_and_mask():
    # a toy embedding: letter counts
    def embed(texts):
        out = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            for c in t.lower():
                if "a" <= c <= "z":
                    out[i, ord(c) - 97] += 1
        return out

    g = TitleGrounder(TITLES, embed=embed)
    r = g.ground("lighthouse in the fog, at night")
    assert r.method == "embedding" and r.item == 1
    masked = np.array([False, True, False, False])
    assert g.ground("Foggy Lighthouse", masked).item != 1
    assert g.ground("The Matrix", masked).item == 0


def test_bad_cutoff():
    with pytest.raises(ValueError, match="fuzzy_cutoff"):
        TitleGrounder(TITLES, fuzzy_cutoff=0)
