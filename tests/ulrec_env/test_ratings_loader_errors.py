"""Ratings files that used to load silently wrong: each is now an error naming file, line and fix, or (duplicates)
a warning with counts; plus a single file holding titles and genres, and worlds named by a `ratings:` spec."""

from __future__ import annotations

import warnings

import pytest

from ulrec_env.worlds import from_ratings
from ulrec_env.worlds.spec import world_from_spec

from .rating_fixtures import make_log, write_csv


def _items_text(path):
    return path.read_text().splitlines()


def _damage_items(items, line, new):
    lines = _items_text(items)
    lines[line - 1] = new
    items.write_text("\n".join(lines) + "\n")


def _damage_ratings(ratings, extra_rows):
    ratings.write_text(ratings.read_text() + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in extra_rows))


BAD_FILES = [
    # (what, how to damage (ratings, items), the error's words)
    ("unquoted comma in a title",
     lambda r, i: _damage_items(i, 4, "3,Movie 3, The Return (1983),Drama"),
     r"items.csv: 1 bad row\(s\): line 4: 4 fields for the header's 3 columns \(a ',' inside a field\? quote that field\)"),
    ("one rating of 50 in a 1-5 log",
     lambda r, i: _damage_ratings(r, [(2, 7, 50, 890_000_000)]),
     r"ratings.csv: 1 of \d+ ratings lie outside the scale 1-5 of all the others \(line \d+: 50\); fix them, or "
     r"pass rating_scale=\(1, 50\)"),
    ("an unbalanced quote",
     lambda r, i: _damage_items(i, 6, '5,"Movie 5 (1985),Comedy'),
     r"items.csv: line 6: a quote is opened and not closed .*Close the quote"),
    ("an unbalanced quote in the ratings",
     lambda r, i: r.write_text(r.read_text().replace("\n3,", '\n"3,', 1)),
     r"ratings.csv: line \d+: a quote is opened and not closed"),
    ("a rating outside the declared scale",
     lambda r, i: _damage_ratings(r, [(2, 7, 9, 890_000_000)]),
     r"line \d+ has rating 9 outside rating_scale \(1.0, 5.0\)"),
]


@pytest.mark.parametrize("what, damage, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_refused_with_file_line_and_fix(tmp_path, what, damage, message):
    ratings, items = write_csv(tmp_path)
    damage(ratings, items)
    kw = {"rating_scale": (1, 5)} if "declared" in what else {}
    with pytest.raises(ValueError, match=message):
        from_ratings(ratings, items, cache=False, **kw)


def test_the_scale_can_be_declared_for_a_rare_high_rating(tmp_path):
    ratings, items = write_csv(tmp_path)
    _damage_ratings(ratings, [(2, 7, 50, 890_000_000)])
    assert from_ratings(ratings, items, cache=False, rating_scale=(1, 50)).rating_scale == (1.0, 50.0)


def test_conflicting_duplicates_are_counted_in_a_warning(tmp_path):
    rows = make_log() + [(1, 40, 1, 1), (1, 40, 5, 2_000_000_000), (2, 40, 3, 5), (2, 40, 3, 6)]
    ratings, items = write_csv(tmp_path, rows=rows)
    with pytest.warns(UserWarning, match=r"(\d+) \(user, item\) pair\(s\) rated more than once, (\d+) of them with "
                                         r"different ratings .*kept each pair's latest rating"):
        world = from_ratings(ratings, items, cache=False)
    assert world.fit_report["duplicates_dropped"] >= 2
    (tmp_path / "clean").mkdir()
    clean, clean_items = write_csv(tmp_path / "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_ratings(clean, clean_items, cache=False)


def test_one_file_with_titles_and_genres(tmp_path):
    from .rating_fixtures import item_meta

    path = tmp_path / "all.csv"
    lines = ["user,item,rating,timestamp,title,genres"]
    for u, i, r, t in make_log():
        title, year, genres = item_meta(i)
        lines.append(f'{u},{i},{r},{t},"{title} ({year})",{"|".join(genres)}')
    path.write_text("\n".join(lines) + "\n")
    world = from_ratings(path, cache=False)
    title, year, genres = item_meta(int(world.item_ids[0]))
    assert world.titles[0] == f"{title} ({year})" and world.genres[0] == genres
    assert not any(t.startswith("Item ") for t in world.titles)
    lines.append(f'1,1,4,999,"Another Title",Drama')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="item '1' is titled .* on line \\d+ and 'Another Title' on line \\d+"):
        from_ratings(path, cache=False)


def test_ratings_world_spec_with_loader_options(tmp_path):
    ratings, items = write_csv(tmp_path)
    text = ratings.read_text().replace("user,item,rating,timestamp", "uid,iid,stars,when", 1)
    ratings.write_text(text)
    items.write_text(items.read_text().replace("item,title,genres", "iid,title,genres", 1))
    world = world_from_spec(f"ratings:{ratings}:{items}:user_col=uid:item_col=iid:rating_col=stars:timestamp_col=when"
                            ":history_len=5:cache=false")
    assert world.name == "ratings" and world.n_users == 30 and max(len(h) for h in world.histories) <= 5
    assert world.user_ids is not None and world.item_ids is not None and len(world.item_ids) == world.n_items
    for bad, message in [("ratings:", "write ratings:RATINGS.csv"), (f"ratings:{ratings}:rating_scale=5",
                                                                      "write rating_scale=LOW,HIGH"),
                         (f"ratings:{ratings}:history_len=five", "is not a number"),
                         (f"ratings:{ratings}:colour=1", "unknown from_ratings argument")]:
        with pytest.raises(ValueError, match=message):
            world_from_spec(bad)


def test_bench_cli_takes_a_ratings_world(tmp_path, capsys):
    from train.cli import main

    ratings, items = write_csv(tmp_path)
    assert main(["bench", "--world", f"ratings:{ratings}:{items}", "--policies", "greedy,random", "--episodes", "all",
                 "--seeds", "1", "--max-episode-steps", "5", "--no-progress"]) == 0
    assert "world ratings" in capsys.readouterr().out
