"""Pair files: reading, ids, validation errors that name the file, row and fix; STS-B through the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.data import DataError, LengthGroupedSampler, PairCollator, make_pair_id, read_pairs, read_texts


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_catalog_stsb_splits_and_labels():
    """STS-B is parsed by tabs (quotes are literal, some lines have extra fields): all rows, labels 0-5."""
    sizes = {}
    for split in ("train", "dev", "test"):
        rows, label_range = read_pairs(f"stsb/{split}")
        sizes[split] = len(rows)
        assert label_range == (0.0, 5.0)
        assert 0.0 <= min(rows["gold"]) and max(rows["gold"]) <= 1.0
    assert sizes == {"train": 5749, "dev": 1500, "test": 1379}
    from distill.catalog import data_root

    rows = read_pairs("stsb/train")[0]
    lines = (data_root() / "stsbenchmark" / "sts-train.csv").read_text(encoding="utf-8").splitlines()
    quoted = next(i for i, line in enumerate(lines) if '"' in line.split("\t")[5])  # a CSV parser would eat these
    extra = next(i for i, line in enumerate(lines) if len(line.split("\t")) > 7)  # fields after s2
    for i in (0, quoted, extra, len(lines) - 1):
        fields = lines[i].split("\t")
        assert (rows[i]["text_a"], rows[i]["text_b"], rows[i]["label"]) == (fields[5], fields[6], float(fields[4]))
        assert rows[i]["gold"] == pytest.approx(float(fields[4]) / 5)


def test_pair_id_is_stable_and_order_sensitive():
    """score(a, b) != score(b, a) for a cross-encoder, so swapped texts get another id; whitespace does not."""
    assert make_pair_id("A cat.", "A dog.") != make_pair_id("A dog.", "A cat.")
    assert make_pair_id("A  cat. ", "A dog.") == make_pair_id("A cat.", "A dog.")
    assert len(make_pair_id("x", "y")) == 20


def test_formats_and_column_names(tmp_path):
    """TSV, JSONL and Parquet with user column names and user ids read to the same rows."""
    import pandas as pd

    frame = pd.DataFrame({"q": ["a b", "c d"], "d": ["e f", "g h"], "sim": [1.0, 4.0], "key": ["k1", "k2"]})
    frame.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    frame.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "p.parquet")
    for name in ("p.tsv", "p.jsonl", "p.parquet"):
        rows, _ = read_pairs(str(tmp_path / name), "q", "d", "sim", "key", (0, 5))
        assert rows["pair_id"] == ["k1", "k2"] and rows["gold"] == pytest.approx([0.2, 0.8])


BAD = {
    "missing column": ("text_a,label\nx,1\n", "missing column(s) ['text_b']", "text_b_column"),
    "nan score": ("text_a,text_b,label\nx,y,1\nx,z,nan\n", "row 2", "not finite"),
    "non-numeric score": ("text_a,text_b,label\nx,y,high\n", "row 1", "not a number"),
    "score outside range": ("text_a,text_b,label\nx,y,7\n", "row 1", "outside label_range [0.0, 5.0]"),
    "empty text": ("text_a,text_b,label\nx,y,1\n ,y,2\n", "row 2", "empty 'text_a'"),
    "no rows": ("text_a,text_b,label\n", "no rows", "non-empty"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_pair_files_name_file_row_and_fix(tmp_path, case):
    """Each bad file fails with one line naming the file, the row (or column) and what to do."""
    text, where, what = BAD[case]
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        read_pairs(path, label_range=(0.0, 5.0))
    message = str(err.value)
    assert "\n" not in message and path in message and where in message and what in message


def test_duplicate_pair_id_with_other_texts(tmp_path):
    """Two rows sharing a user id but not their texts would share one teacher score in the cache."""
    path = write(tmp_path / "dup.csv", "id,text_a,text_b,label\np1,x,y,1\np2,u,v,2\np1,x,z,3\n")
    with pytest.raises(DataError, match=r"row 3: pair_id 'p1' already names row 1"):
        read_pairs(path, id_column="id", label_range=(0, 5))
    same = write(tmp_path / "same.csv", "id,text_a,text_b,label\np1,x,y,1\np1,x,y,1\n")
    assert len(read_pairs(same, id_column="id", label_range=(0, 5))[0]) == 2


def test_labels_need_a_declared_range(tmp_path):
    """Without a range, labels cannot be mapped to [0, 1] and would train on the wrong scale."""
    path = write(tmp_path / "p.csv", "text_a,text_b,label\nx,y,1\n")
    with pytest.raises(DataError, match="label_range"):
        read_pairs(path)


def test_unknown_format_and_missing_file(tmp_path):
    """Unreadable inputs are named with the file, not a pandas traceback."""
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        read_pairs(write(tmp_path / "p.txt", "x"))
    with pytest.raises(DataError, match="no such file"):
        read_pairs(str(tmp_path / "absent.csv"))
    with pytest.raises(DataError, match=r"p.jsonl, line 1: not valid JSON"):
        read_pairs(write(tmp_path / "p.jsonl", "{not json\n"))


def test_texts_for_predict(tmp_path):
    """A student's predict input keeps the user's ids, so embeddings can be joined back."""
    rows = read_texts(write(tmp_path / "t.jsonl", "\n".join(json.dumps({"id": i, "text": t})
                                                           for i, t in enumerate(["a", "b"]))))
    assert rows["pair_id"] == ["0", "1"] and rows["text_a"] == ["a", "b"]


def test_collator_pads_per_batch_to_one_width():
    """Padding is to the batch's longest sequence, shared by both sides (one forward pass)."""
    rows = [{"pair_id": "1", "a_input_ids": [1, 2, 3], "a_attention_mask": [1, 1, 1], "b_input_ids": [4],
             "b_attention_mask": [1], "gold": 0.5},
            {"pair_id": "2", "a_input_ids": [5], "a_attention_mask": [1], "b_input_ids": [6, 7],
             "b_attention_mask": [1, 1], "gold": 1.0}]
    batch = PairCollator(pad_token_id=0)(rows)
    assert batch["a_input_ids"].tolist() == [[1, 2, 3], [5, 0, 0]]
    assert batch["b_attention_mask"].tolist() == [[1, 0, 0], [1, 1, 0]]
    assert batch["gold"].dtype == torch.float32


def test_length_grouped_sampler_is_a_permutation_with_alike_neighbours():
    """Grouping must neither drop nor repeat rows, and must reshuffle every epoch."""
    lengths = [i % 50 for i in range(1000)]
    sampler = LengthGroupedSampler(lengths, window=100, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and list(sampler) == order  # the same epoch, the same order
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order each epoch
    window = [lengths[i] for i in order[:100]]
    assert window == sorted(window)


def test_label_range_must_be_increasing(tmp_path):
    """[3, 3] would divide by zero when mapping labels; [5, 0] would reject every row."""
    path = write(tmp_path / "p.csv", "text_a,text_b,label\nx,y,1\n")
    for bad in ((3.0, 3.0), (5.0, 0.0)):
        with pytest.raises(DataError, match="empty or reversed"):
            read_pairs(path, label_range=bad)


def test_named_label_column_must_exist(tmp_path):
    """A misspelt label column is an error, not a silently unlabelled file."""
    path = write(tmp_path / "p.csv", "text_a,text_b,score\nx,y,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['scroe'\]"):
        read_pairs(path, label_column="scroe", label_range=(0, 5))
    assert "label" not in read_pairs(path)[0].column_names  # the default column may be absent


def test_fingerprint_sees_edited_texts_under_kept_ids(tmp_path):
    """User ids kept while a text changes must still give another data fingerprint (stale cache)."""
    from distill.data import fingerprint

    a = write(tmp_path / "a.csv", "id,text_a,text_b,label\np1,x,y,1\n")
    b = write(tmp_path / "b.csv", "id,text_a,text_b,label\np1,x,z,1\n")
    rows = [read_pairs(p, id_column="id", label_range=(0, 5))[0] for p in (a, b)]
    assert fingerprint(rows[0]) != fingerprint(rows[1])


def test_tsv_quotes_are_text_and_an_unbalanced_quote_merges_nothing(tmp_path):
    """TSV is tab-separated text: a leading quote stays, an unbalanced one cannot swallow the next rows."""
    path = write(tmp_path / "q.tsv", 'text_a\ttext_b\tlabel\n"quoted" start\tplain\t1\nopen " quote\tb\t2\nc\td\t3\n')
    rows, _ = read_pairs(path, label_range=(0, 5))
    assert rows["text_a"] == ['"quoted" start', 'open " quote', "c"] and rows["label"] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("name,content,message", [
    ("dup.csv", "text_a,text_b,text_a\na,b,c\n", r"dup.csv: column 'text_a' appears twice"),
    ("dup.tsv", "text_a\ttext_b\ttext_b\na\tb\tc\n", r"dup.tsv: column 'text_b' appears twice"),
    ("dup.jsonl", '{"text_a": "a", "text_b": "b", "text_a": "c"}\n', r"dup.jsonl, line 1: key 'text_a' appears twice"),
    ("broken.jsonl", '{"text_a": "a", "text_b": "b"}\n{"text_a": "a",\n', r"broken.jsonl, line 2: not valid"),
    ("zw.csv", "text_a,text_b\na,\u200b\u200d\ufeff\n", r"zw.csv, row 1: invisible-only 'text_b' text"),
])
def test_bad_tables_are_named_with_their_line(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path / name, content), label_column=None)


def test_under_ddp_each_epoch_gets_its_own_length_grouped_order():
    """Lightning wraps our sampler under DDP; the wrapper must forward set_epoch (Lightning PR #21456, in 2.6.1 and
    later: the version floor), or every epoch replays one order."""
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = LengthGroupedSampler([5, 3, 8, 1, 9, 2, 7, 4, 6, 10] * 4, window=4, seed=0)
    rank0 = DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False)
    orders = []
    for epoch in (0, 1):
        rank0.set_epoch(epoch)
        orders.append(list(rank0))
    assert sampler.epoch == 1 and orders[0] != orders[1] and len(orders[0]) == len(orders[1]) == 20
