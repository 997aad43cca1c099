"""The score-cache join at scale (`distill.cache_join`): equal to the old dict join, and its refusals."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from distill.cache_join import ScoreCache, join_caches
from distill.cache_keys import hash64, make_pair_id, normalise, normalise_arrow, text_keys
from distill.names import MANIFEST
from distill.score_cache import CacheError, apply_transform, sha256_file, shard_name, stored_text_keys, write_shard


def make_cache(directory: Path, ids: list[str], scores: list | np.ndarray, keys: np.ndarray | None = None,
               shard_size: int = 4096, transform: str = "sigmoid", old_format: bool = False) -> Path:
    """A complete cache written through the real shard writer (or, `old_format`, as before key columns)."""
    directory.mkdir(parents=True)
    listed = []
    for s in range(0, len(ids), shard_size):
        e = min(s + shard_size, len(ids))
        if old_format:
            pq.write_table(pa.table({"pair_id": pa.array(ids[s:e]), "score": pa.array(scores[s:e], pa.float32())}),
                           directory / shard_name(s, e))
        else:
            write_shard(directory, s, e, ids[s:e], scores[s:e], None if keys is None else keys[s:e])
        path = directory / shard_name(s, e)
        listed.append({"file": path.name, "start": s, "end": e, "rows": e - s, "sha256": sha256_file(path)})
    manifest = {"format": 1, "teacher": {"score_transform": transform},
                "data": {"fingerprint": "f" * 64, "source": str(directory), "split": "train", "n_pairs": len(ids),
                         "label_range": None}, "shards": listed, "complete": True}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def old_dict_join(directories: list[Path], rows: Dataset) -> list:
    """The join as it was before 10^7 pairs mattered: every score in one dict (the reference)."""
    key = "pivot_id" if "pivot_id" in rows.column_names else "pair_id"
    scores: dict = {}
    for d in directories:
        manifest = json.loads((d / MANIFEST).read_text())
        for shard in manifest["shards"]:
            table = pq.read_table(d / shard["file"])
            column = "score" if "score" in table.column_names else "scores"
            raw = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
            values = apply_transform(raw, manifest["teacher"]["score_transform"], manifest["data"].get("label_range"))
            scores.update(zip(table.column("pair_id").to_pylist(), values.tolist()))
    return [scores[pid] for pid in rows[key]]


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    a = [f"a man plays number {i} on {rng.integers(1000)}" for i in range(n)]
    b = [f"a dog sits  {i}" for i in range(n)]
    return [make_pair_id(x, y) for x, y in zip(a, b)], a, b


def test_new_join_equals_the_old_dict_join_at_1e5_pairs(tmp_path: Path) -> None:
    n = 100_000
    ids, a, b = pairs(n)
    rng = np.random.default_rng(1)
    raw = rng.normal(size=n).astype(np.float32)
    ids[n - 1], a[n - 1], b[n - 1] = ids[7], a[7], b[7]  # a pair listed twice in one cache: the later row wins
    cache = make_cache(tmp_path / "c", ids, raw, text_keys(a, b), shard_size=3000)
    order = rng.permutation(n - 1)
    rows = Dataset.from_dict({"pair_id": [ids[i] for i in order], "text_a": [a[i] for i in order],
                              "text_b": [b[i] for i in order]})
    joined = join_caches([ScoreCache(cache)], rows)
    assert joined.features["score"].dtype == "float32"
    want = old_dict_join([cache], rows)
    assert joined["score"] == want
    assert joined[int(np.flatnonzero(order == 7)[0])]["score"] == pytest.approx(1 / (1 + np.exp(-raw[n - 1])))


def test_multi_class_scores_join_as_lists(tmp_path: Path) -> None:
    ids, a, b = pairs(500)
    scores = np.random.default_rng(0).random((500, 3)).astype(np.float32).tolist()
    cache = make_cache(tmp_path / "c", ids, scores, text_keys(a, b), shard_size=128, transform="identity")
    rows = Dataset.from_dict({"pair_id": ids, "text_a": a, "text_b": b}).select(range(499, -1, -2))  # an index map
    joined = join_caches([ScoreCache(cache)], rows)
    assert joined["score"] == old_dict_join([cache], rows) and len(joined[0]["score"]) == 3


def test_pivot_rows_join_and_verify_on_their_english_source(tmp_path: Path) -> None:
    en_a, en_b = ["a man plays", "a dog runs"], ["a man sings", "a cat sits"]
    ids = [make_pair_id(x, y) for x, y in zip(en_a, en_b)]
    cache = make_cache(tmp_path / "c", ids, [0.0, 2.0], text_keys(en_a, en_b))
    rows = {"pair_id": ["x1", "x2", "x3"], "pivot_id": [ids[1], ids[0], ids[1]],
            "text_a": ["ein Hund", "ein Mann", "un chien"], "text_b": ["eine Katze", "ein Mann", "un chat"],
            "src_a": [en_a[1], en_a[0], en_a[1]], "src_b": [en_b[1], en_b[0], en_b[1]]}
    joined = join_caches([ScoreCache(cache)], Dataset.from_dict(rows))
    assert joined["score"] == old_dict_join([cache], joined) == pytest.approx([0.8808, 0.5, 0.8808], abs=1e-4)
    rows["src_b"][2] = "a cat sleeps"  # the English source changed since the cache was made
    with pytest.raises(CacheError, match=r"is stale: 1 of 3 .*first pivot_id"):
        join_caches([ScoreCache(cache)], Dataset.from_dict(rows))


def test_stale_texts_under_user_ids_are_refused(tmp_path: Path) -> None:
    """User-supplied ids (id_column) over edited texts would silently reuse the old scores."""
    scored = Dataset.from_dict({"pair_id": ["q1", "q2", "q3"], "text_a": ["a man plays", "a dog", "x"],
                                "text_b": ["a man sings", "a cat", "y"]})
    keys = stored_text_keys(scored)
    assert (keys != 0).all()  # user ids: recorded, so checkable
    cache = make_cache(tmp_path / "c", scored["pair_id"], [1.0, 2.0, 3.0], keys)
    # the same texts up to normalisation (NFC, whitespace) are the same pairs
    same = Dataset.from_dict({"pair_id": ["q2", "q1"], "text_a": [" a\u00a0dog", "a man\tplays"],
                              "text_b": ["a cat ", "a  man sings"]})
    assert join_caches([ScoreCache(cache)], same)["score"] == pytest.approx([0.8808, 0.7311], abs=1e-4)
    edited = Dataset.from_dict({"pair_id": ["q1", "q2"], "text_a": ["a man plays", "a dog"],
                                "text_b": ["a man sings", "a cat sleeps"]})
    with pytest.raises(CacheError, match=rf"{re.escape(str(cache))} is stale: 1 of 2 training pairs .*first pair_id "
                                         r"'q2'.*'a cat sleeps'.*distill cache --overwrite"):
        join_caches([ScoreCache(cache)], edited)


def test_ids_that_hash_the_texts_are_not_rehashed_at_join(tmp_path: Path) -> None:
    ids, a, b = pairs(3)
    keys = stored_text_keys(Dataset.from_dict({"pair_id": ids, "text_a": a, "text_b": b}))
    assert (keys == 0).all()  # a default id cannot go stale: nothing to record


def test_one_pair_in_two_caches_is_refused_naming_both(tmp_path: Path) -> None:
    ids, a, b = pairs(50)
    keys = text_keys(a, b)
    one = make_cache(tmp_path / "gold", ids[:30], np.zeros(30, np.float32), keys[:30], shard_size=8)
    two = make_cache(tmp_path / "silver", ids[25:], np.ones(25, np.float32), keys[25:], shard_size=8)
    rows = Dataset.from_dict({"pair_id": ids, "text_a": a, "text_b": b})
    with pytest.raises(CacheError, match=r"pair_id '[0-9a-f]{20}' is in both .*gold and .*silver"):
        join_caches([ScoreCache(one), ScoreCache(two)], rows)
    three = make_cache(tmp_path / "disjoint", ids[30:], np.ones(20, np.float32), keys[30:], shard_size=8)
    assert join_caches([ScoreCache(one), ScoreCache(three)], rows)["score"] == old_dict_join([one, three], rows)


def test_a_64_bit_key_collision_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(tmp_path / "c", ["p1", "p2", "p3"], [0.0, 1.0, 2.0], text_keys(["b", "x", "a"], ["c", "y", "b"]))
    rows = Dataset.from_dict({"pair_id": ["p3", "p1"], "text_a": ["a", "b"], "text_b": ["b", "c"]})
    # stored keys from another hash are recomputed (else every pair would look absent)
    shard = cache / shard_name(0, 3)
    table = pq.read_table(shard)
    pq.write_table(table.set_column(table.column_names.index("key"), "key", pa.array([5, 6, 7], pa.int64())), shard)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["shards"][0]["sha256"] = sha256_file(shard)
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="no usable text_key"):  # its text keys came from that hash too
        assert join_caches([ScoreCache(cache)], rows)["score"] == pytest.approx([0.8808, 0.5], abs=1e-4)
    # a hash under which two ids collide
    monkeypatch.setattr("distill.cache_join.hash64", lambda ids: np.where(
        np.isin(np.asarray(ids.to_pylist(), object), ["p1", "p2"]), 5, 9).astype(np.int64))
    with pytest.raises(CacheError, match=r"pair_ids 'p1' and 'p2' share one 64-bit key"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        join_caches([ScoreCache(cache)], rows)


def test_a_shard_with_integer_pair_ids_is_named(tmp_path: Path) -> None:
    directory = make_cache(tmp_path / "c", ["1", "2"], [0.0, 1.0], old_format=True)
    shard = directory / shard_name(0, 2)
    pq.write_table(pa.table({"pair_id": pa.array([1, 2], pa.int64()), "score": pa.array([0.0, 1.0], pa.float32())}),
                   shard)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["shards"][0]["sha256"] = sha256_file(shard)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=rf"{re.escape(str(shard))}: column pair_id is int64, expected strings;.*"
                                         r"distill cache --overwrite"):
        join_caches([ScoreCache(directory)], Dataset.from_dict({"pair_id": ["1"], "text_a": ["a"], "text_b": ["b"]}))


def test_missing_scores_keep_their_one_line_error(tmp_path: Path) -> None:
    ids, a, b = pairs(10)
    cache = make_cache(tmp_path / "c", ids[:8], np.zeros(8, np.float32), text_keys(a[:8], b[:8]))
    rows = Dataset.from_dict({"pair_id": ids, "text_a": a, "text_b": b})
    with pytest.raises(CacheError) as err:
        join_caches([ScoreCache(cache)], rows)
    assert str(err.value) == (
        f"2 of 10 training pairs have no teacher score (first pair_id {ids[8]!r} ({a[8][:40]!r} / {b[8][:40]!r})); "
        f"{cache} was made for {cache} split train (data.fingerprint ffffffffffff). Re-run `distill cache` on this "
        f"data (mined pairs: `distill cache --data.init_args.train <mined file> --out <dir>`) and list every cache in "
        f"data.init_args.cache_dir")


def test_an_old_format_cache_still_joins_with_a_warning(tmp_path: Path) -> None:
    ids, a, b = pairs(300)
    cache = make_cache(tmp_path / "c", ids, np.linspace(-3, 3, 300, dtype=np.float32), shard_size=64,
                       old_format=True)
    assert pq.read_table(cache / shard_name(0, 64)).column_names == ["pair_id", "score"]
    rows = Dataset.from_dict({"pair_id": ids[::-3], "text_a": a[::-3], "text_b": b[::-3]})
    with pytest.warns(UserWarning, match="no usable text_key column.*cannot be checked"):
        joined = join_caches([ScoreCache(cache)], rows)
    assert joined["score"] == old_dict_join([cache], rows)
    assert ScoreCache(cache).scores() == dict(zip(ids, old_dict_join([cache], Dataset.from_dict({"pair_id": ids}))))
    new = make_cache(tmp_path / "new", ids, np.zeros(300, np.float32), text_keys(a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache that records its texts joins without the warning
        join_caches([ScoreCache(new)], rows)


def test_keys_match_python_normalise_and_both_hash_paths() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    collapsed = np.array(normalise_arrow(pa.array([f"a{c}b" for c in chars])).to_pylist()) == "a b"
    assert (collapsed == np.array([c.isspace() for c in chars])).all()  # exactly str.split()'s whitespace
    spaces = [c for c in chars if c.isspace()]
    texts = ["  a\u00a0b\x1cc\u3000 ", "e\u0301x  y", "\t", "plain", "a\x1fb", "x\u2028y\u200bz", " lead", "a\nb",
             "caf\u00e9", "cafe\u0301", *(f"w{c}w" for c in spaces)]
    assert normalise_arrow(pa.array(texts)).to_pylist() == [normalise(t) for t in texts]
    ids = [make_pair_id(str(i), "x") for i in range(1000)]
    fixed = hash64(ids)  # every id 20 chars: the fixed-width path
    assert (hash64([*ids, "longer-than-twenty-chars"])[:-1] == fixed).all() and len(set(fixed.tolist())) == 1000
    assert (hash64(pa.chunked_array([pa.array(ids[:10]), pa.array(ids[10:])])) == fixed).all()
    assert (hash64(pa.array(ids).cast(pa.large_string()).slice(5)) == fixed[5:]).all()
    assert text_keys(["cafe\u0301 "], ["b"])[0] == text_keys(["caf\u00e9"], ["b"])[0] != text_keys(["cafe"], ["b"])[0]
