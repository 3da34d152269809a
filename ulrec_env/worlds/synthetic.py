"""The embedded default world: generated from a seed, shipped as code, no download."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ulrec_env.world import World

__all__ = ["synthetic", "GENRE_WORDS"]

#: Per genre, (adjectives, nouns). A title is "Adjective Noun"; an item of two genres takes the adjective
#: of its first genre and the noun of its second, so a title hints at what the item is.
GENRE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Action": (
        ("Iron", "Steel", "Rogue", "Burning", "Final", "Savage", "Bullet", "Thunder", "Rapid", "Lethal"),
        ("Strike", "Protocol", "Fury", "Vendetta", "Assault", "Impact", "Showdown", "Breach", "Rampage", "Siege", "Velocity", "Takedown"),
    ),
    "Adventure": (
        ("Lost", "Hidden", "Distant", "Golden", "Wild", "Forgotten", "Emerald", "Endless", "Secret", "Northern"),
        ("Expedition", "Voyage", "Island", "Temple", "Journey", "Compass", "Treasure", "Horizon", "Canyon", "Passage", "Quest", "Jungle"),
    ),
    "Animation": (
        ("Little", "Bouncy", "Happy", "Tiny", "Fluffy", "Jolly", "Sunny", "Silly", "Magic", "Cuddly"),
        ("Bunny", "Kingdom", "Friends", "Puppets", "Bubbles", "Dragonfly", "Meadow", "Toybox", "Lantern", "Parade", "Kitten", "Balloon"),
    ),
    "Comedy": (
        ("Crazy", "Awkward", "Clumsy", "Wacky", "Accidental", "Lucky", "Cheeky", "Goofy", "Unlikely", "Sneaky"),
        ("Wedding", "Roommates", "Vacation", "Neighbors", "Weekend", "Uncle", "Interns", "Mixup", "Reunion", "Office", "Bachelor", "Roadtrip"),
    ),
    "Crime": (
        ("Dirty", "Cold", "Crooked", "Silent", "Midnight", "Hard", "Double", "Underground", "Blind", "Stolen"),
        ("Money", "Alibi", "Heist", "Verdict", "Witness", "Racket", "Cartel", "Ledger", "Informant", "Badge", "Getaway", "Syndicate"),
    ),
    "Documentary": (
        ("Untold", "Living", "Modern", "Ancient", "Urban", "Invisible", "Real", "Changing", "Fragile", "Human"),
        ("Oceans", "Economy", "Migration", "Harvest", "Archives", "Climate", "Factory", "Rivers", "Voices", "Planet", "Genome", "Cities"),
    ),
    "Drama": (
        ("Quiet", "Broken", "Tender", "Bitter", "Last", "Fading", "Gentle", "Restless", "Unspoken", "Lonely"),
        ("Letters", "Summer", "Promise", "Daughter", "Harbor", "Winter", "Inheritance", "Silence", "Years", "Confession", "Homecoming", "Orchard"),
    ),
    "Fantasy": (
        ("Enchanted", "Elder", "Shattered", "Arcane", "Crystal", "Eternal", "Moonlit", "Sacred", "Runic", "Ember"),
        ("Crown", "Sorcerer", "Realm", "Dragon", "Sword", "Oracle", "Throne", "Grimoire", "Citadel", "Phoenix", "Wyvern", "Amulet"),
    ),
    "Horror": (
        ("Haunted", "Bleeding", "Rotten", "Cursed", "Hollow", "Screaming", "Wretched", "Pale", "Grim", "Creeping"),
        ("Asylum", "Cellar", "Doll", "Manor", "Ritual", "Shadows", "Graveyard", "Specter", "Carcass", "Attic", "Witch", "Whispers"),
    ),
    "Musical": (
        ("Harmonic", "Rhythmic", "Melodic", "Swinging", "Dancing", "Singing", "Jazzy", "Lyrical", "Velvet", "Encore"),
        ("Ballroom", "Serenade", "Chorus", "Rhapsody", "Cabaret", "Overture", "Tango", "Jukebox", "Broadway", "Carnival", "Waltz", "Melody"),
    ),
    "Mystery": (
        ("Curious", "Puzzling", "Vanishing", "Locked", "Foggy", "Missing", "Crimson", "Riddled", "Peculiar", "Obscure"),
        ("Clue", "Case", "Key", "Cipher", "Detective", "Inspector", "Enigma", "Portrait", "Manuscript", "Lighthouse", "Riddle", "Footprints"),
    ),
    "Romance": (
        ("Sweet", "Passionate", "Forbidden", "Starry", "Blushing", "Timeless", "Moonstruck", "Parisian", "Lovesick", "Rosy"),
        ("Kiss", "Romance", "Valentine", "Affair", "Heartbeat", "Sweetheart", "Proposal", "Honeymoon", "Embrace", "Rendezvous", "Darling", "Crush"),
    ),
    "Sci-Fi": (
        ("Quantum", "Orbital", "Stellar", "Cyber", "Galactic", "Neon", "Synthetic", "Plasma", "Hyper", "Android"),
        ("Colony", "Nebula", "Station", "Signal", "Singularity", "Paradox", "Outpost", "Reactor", "Starship", "Matrix", "Cortex", "Drone"),
    ),
    "Thriller": (
        ("Deadly", "Hostile", "Covert", "Ruthless", "Fatal", "Sleepless", "Paranoid", "Frozen", "Dark", "Nervous"),
        ("Pursuit", "Trap", "Agenda", "Countdown", "Hostage", "Conspiracy", "Target", "Deadline", "Exposure", "Dossier", "Safehouse", "Ultimatum"),
    ),
    "War": (
        ("Bloody", "Fallen", "Brave", "Frontline", "Scorched", "Valiant", "Grey", "Wounded", "Marching", "Forward"),
        ("Battalion", "Trenches", "Regiment", "Beachhead", "Armistice", "Convoy", "Platoon", "Bunker", "Garrison", "Offensive", "Flag", "Veterans"),
    ),
    "Western": (
        ("Dusty", "Lonesome", "Outlaw", "Rusty", "Desert", "Sundown", "Copper", "Rawhide", "Prairie", "Wandering"),
        ("Saloon", "Sheriff", "Stagecoach", "Gulch", "Bounty", "Rodeo", "Ranch", "Mesa", "Gunslinger", "Posse", "Corral", "Spurs"),
    ),
    "Sports": (
        ("Underdog", "Champion", "Rookie", "Winning", "Unbeaten", "Comeback", "Varsity", "Overtime", "Pro", "Record"),
        ("Season", "Team", "Match", "Coach", "Stadium", "Playoffs", "Racer", "League", "Derby", "Tournament", "Goal", "Knockout"),
    ),
    "Family": (
        ("Merry", "Cozy", "Backyard", "Grandma's", "Holiday", "Sunday", "Homemade", "Friendly", "Pet", "Farmhouse"),
        ("Camp", "Picnic", "Dog", "Pony", "Treehouse", "Christmas", "Puppy", "Cousins", "Bakery", "Sleepover", "Pancakes", "Twins"),
    ),
}

GENRES = tuple(GENRE_WORDS)


def _titles_and_genres(n_items: int, second_genre_p: float, rng: np.random.Generator):
    n_genres = len(GENRES)
    titles: list[str] = []
    genres: list[tuple[int, ...]] = []
    taken: set[str] = set()
    # Spread items evenly over genres, then fill each with distinct word pairs.
    primary = rng.permutation(np.arange(n_items) % n_genres)
    for g in primary:
        for _ in range(200):
            second = int(rng.integers(n_genres)) if rng.random() < second_genre_p else int(g)
            if second == g:
                second = int(g)
            adjectives, _ = GENRE_WORDS[GENRES[g]]
            _, nouns = GENRE_WORDS[GENRES[second]]
            title = f"{adjectives[rng.integers(len(adjectives))]} {nouns[rng.integers(len(nouns))]}"
            if title in taken:
                # A sequel number keeps titles distinct once the plain pairs run out.
                title = f"{title} {int(rng.integers(2, 5))}"
            if title not in taken:
                taken.add(title)
                titles.append(title)
                genres.append((int(g),) if second == g else (int(g), second))
                break
        else:  # pragma: no cover - only reachable for absurd n_items
            raise ValueError(f"n_items={n_items} is too many for the synthetic title generator (max about 6,000).")
    return titles, genres


@functools.lru_cache(maxsize=8)
def _cached(**kwargs: Any) -> World:
    return _generate(**kwargs)


def synthetic(
    seed: int = 0,
    n_items: int = 1500,
    n_users: int = 1000,
    history_len: tuple[int, int] = (15, 20),
    test_fraction: float = 0.2,
    second_genre_p: float = 0.3,
    favourite_genres: tuple[int, int] = (2, 4),
    disliked_genres: tuple[int, int] = (3, 6),
) -> World:
    """The embedded default world: a deterministic function of its arguments.

    Items fall into 18 genres (30% with a second genre); their titles are "Adjective Noun" pairs drawn from
    each genre's vocabulary ("Haunted Manor" is horror, "Haunted Starship" horror and sci-fi). Item
    embeddings sit around genre centroids, so items of one genre are close and the distance shows it.
    Each user has a few favourite genres (rated about 4-5), a few disliked ones (often below 2, which makes
    a user leave) and a latent taste on top; the history is 15-20 items the user liked, oldest first.
    80/20 train/test split of users.

    The calibrated settings for this world (``env_defaults``) put ``distance_threshold`` at the typical
    distance between two items of one genre, so showing one genre over and over bores the user quickly.

    Args:
        seed: Seed of every random choice; the same arguments always give the same world.
        n_items: Catalog size (at most about 6,000).
        n_users: Number of users (world rows).
        history_len: Range (inclusive) of history lengths.
        test_fraction: Share of users held out as test users.
        second_genre_p: Probability that an item has a second genre.
        favourite_genres: Range (inclusive) of how many genres a user loves.
        disliked_genres: Range (inclusive) of how many genres a user dislikes.
    """
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    if not 2 <= n_items <= 6000:
        raise ValueError(f"`n_items` must be in [2, 6000], got {n_items}.")
    if n_users < 2:
        raise ValueError(f"`n_users` must be >= 2, got {n_users}.")
    if not (1 <= history_len[0] <= history_len[1] < n_items):
        raise ValueError(f"`history_len` must be (low, high) with 1 <= low <= high < n_items, got {history_len}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    return _cached(
        seed=int(seed),
        n_items=int(n_items),
        n_users=int(n_users),
        history_len=tuple(history_len),
        test_fraction=float(test_fraction),
        second_genre_p=float(second_genre_p),
        favourite_genres=tuple(favourite_genres),
        disliked_genres=tuple(disliked_genres),
    )


def _generate(
    seed: int,
    n_items: int,
    n_users: int,
    history_len: tuple[int, int],
    test_fraction: float,
    second_genre_p: float,
    favourite_genres: tuple[int, int],
    disliked_genres: tuple[int, int],
) -> World:
    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)
    titles, item_genres = _titles_and_genres(n_items, second_genre_p, rng)

    # Item embeddings: genre centroids far apart, items scattered around their genre(s).
    dim = 16
    centroids = rng.normal(size=(n_genres, dim))
    centroids *= 10.0 / np.linalg.norm(centroids, axis=1, keepdims=True)
    membership = np.zeros((n_items, n_genres))
    for i, gs in enumerate(item_genres):
        membership[i, list(gs)] = 1.0 / len(gs)
    emb = membership @ centroids + rng.normal(scale=1.2, size=(n_items, dim))
    sq = (emb * emb).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    # Rescale so that the median distance is 100 (the scale of the seed's Steam data).
    dist *= 100.0 / np.median(dist[np.triu_indices(n_items, 1)])

    # Ratings: genre affinity + item quality + user bias + a small latent taste.
    affinity = rng.normal(0.0, 0.5, size=(n_users, n_genres))
    for u in range(n_users):
        order = rng.permutation(n_genres)
        n_fav = rng.integers(favourite_genres[0], favourite_genres[1] + 1)
        n_dis = rng.integers(disliked_genres[0], disliked_genres[1] + 1)
        affinity[u, order[:n_fav]] += rng.uniform(1.2, 1.8, size=n_fav)
        affinity[u, order[n_fav : n_fav + n_dis]] -= rng.uniform(1.3, 2.0, size=n_dis)
    quality = rng.normal(0.0, 0.35, size=n_items)
    bias = rng.normal(0.0, 0.25, size=n_users)
    k = 4
    p, q = rng.normal(0.0, 0.35, size=(n_users, k)), rng.normal(0.0, 0.35, size=(n_items, k))
    ratings = 3.0 + bias[:, None] + quality[None, :] + affinity @ membership.T + p @ q.T
    ratings = np.clip(ratings, 1.0, 5.0).astype(np.float32)

    # Histories: items the user liked, oldest first.
    histories = []
    for u in range(n_users):
        length = int(rng.integers(history_len[0], history_len[1] + 1))
        w = np.exp(2.0 * (ratings[u].astype(np.float64) - 5.0))
        histories.append(rng.choice(n_items, size=length, replace=False, p=w / w.sum()).astype(np.int64))

    popularity = np.bincount(np.concatenate(histories), minlength=n_items) + rng.poisson(5.0 * np.exp(quality))
    perm = rng.permutation(n_users)
    n_test = max(1, int(round(test_fraction * n_users)))
    test_users, train_users = np.sort(perm[:n_test]), np.sort(perm[n_test:])

    # Typical distance between two items of the same single genre: redundancy is measured against it.
    single = np.array([len(gs) == 1 for gs in item_genres])
    prim = np.array([gs[0] for gs in item_genres])
    same = (prim[:, None] == prim[None, :]) & single[:, None] & single[None, :]
    np.fill_diagonal(same, False)
    within = float(np.median(dist[same]))

    return World(
        name="synthetic" if seed == 0 else f"synthetic-{seed}",
        titles=tuple(titles),
        genres=tuple(tuple(GENRES[g] for g in gs) for gs in item_genres),
        ratings=ratings,
        distance=dist.astype(np.float32),
        histories=tuple(histories),
        train_users=train_users,
        test_users=test_users,
        rating_scale=(1.0, 5.0),
        popularity=popularity,
        env_defaults={"distance_threshold": round(within, 1)},
        source=f"ulrec_env.worlds.synthetic(seed={seed})",
    )
