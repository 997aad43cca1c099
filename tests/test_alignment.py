"""Alignment from parallel data: reading, test-set exclusion, the teacher-embedding cache, translation accuracy and
a tiny alignment fit against an lr = 0 control (tiny models; real catalog data only where a test set is needed)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from cli_args import QUIET, ROOT
from conftest import sentence

from distill import catalog, embedding_cache
from distill.cli import run
from distill.data import DataError
from distill.evaluation import bitext_retrieval, translation_accuracy
from distill.parallel import ParallelDataModule, read_parallel
from distill.score_cache import CacheError


def _write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _translate(text: str) -> str:
    """A stand-in translation: the words reversed (another sequence of the same vocabulary)."""
    return " ".join(reversed(text.rstrip(".").split())) + "."


def _parallel_files(folder: Path, n: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    sources = list(dict.fromkeys(sentence(rng) for _ in range(n * 2)))[:n]
    return {"source": _write_lines(folder / "src.en", sources),
            "translation": _write_lines(folder / "src.de", [_translate(s) for s in sources]), "lang": "de"}


def _other_bert(tiny_backbone: str, folder: Path, width: int = 32, seed: int = 1) -> str:
    """A second tiny BERT on the same vocabulary (another space, optionally another width): a teacher."""
    from transformers import BertConfig, BertModel

    shutil.copytree(tiny_backbone, folder)
    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(tiny_backbone)
    config.hidden_size, config.intermediate_size = width, 2 * width
    BertModel(config).save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------ reading, bad input


def test_parallel_sources_read_in_every_form(tmp_path: Path) -> None:
    files = _parallel_files(tmp_path, 5)
    rows = read_parallel(files)
    assert len(rows) == 5 and set(rows["lang"]) == {"de"}
    assert rows[2]["translation"] == _translate(rows[2]["source"]) != rows[2]["source"]
    table = tmp_path / "pairs.tsv"
    pd.DataFrame({"source": ["One.", "Two."], "translation": ["Eins.", "Zwei."], "lang": ["de", "de"]}).to_csv(
        table, sep="\t", index=False)
    assert list(read_parallel(str(table))["translation"]) == ["Eins.", "Zwei."]
    flores = read_parallel("flores200/deu_Latn/dev")
    assert len(flores) == 997 and flores[0]["lang"] == "de"  # ISO 639-1 whatever the catalog's code
    with pytest.raises(DataError, match=r"pairs2.tsv: no column 'translation'"):
        pd.DataFrame({"source": ["One."], "target": ["Eins."]}).to_csv(tmp_path / "pairs2.tsv", sep="\t",
                                                                       index=False)
        read_parallel(str(tmp_path / "pairs2.tsv"), lang="de")


def test_misaligned_files_and_empty_lines_are_named(tmp_path: Path) -> None:
    a = _write_lines(tmp_path / "a.en", ["One.", "Two.", "Three."])
    b = _write_lines(tmp_path / "b.de", ["Eins.", "Zwei."])
    with pytest.raises(DataError, match=r"a.en has 3 lines but .*b.de has 2; parallel files must be line-aligned"):
        read_parallel({"source": a, "translation": b, "lang": "de"})
    c = _write_lines(tmp_path / "c.de", ["Eins.", "  ", "Drei."])
    with pytest.raises(DataError, match=r"c.de, line 2: empty line"):
        read_parallel({"source": a, "translation": c, "lang": "de"})
    # a U+0085 inside a sentence is no line break (str.splitlines would shift every later line)
    d = _write_lines(tmp_path / "d.de", ["Eins\x85zwei.", "Zwei.", "Drei."])
    assert read_parallel({"source": a, "translation": d, "lang": "de"})["translation"][1] == "Zwei."


def test_unknown_language_code_gets_close_matches() -> None:
    with pytest.raises(DataError, match=r"unknown language code 'dee'.*close matches: de"):
        ParallelDataModule(parallel_languages=["de", "dee"])
    with pytest.raises(DataError, match=r"unknown corpus 'opus'"):
        ParallelDataModule(parallel_languages=["de"], corpora=["opus"])


def test_pairs_sharing_a_sentence_with_a_test_set_are_dropped_and_counted(tmp_path: Path) -> None:
    german, english = catalog.read_tatoeba("de")
    flores = catalog.load("flores200/deu_Latn/devtest").rows
    sources = ["A sentence found in no test set.", english[3], "Another fresh sentence.", flores["source"][7],
               "A third fresh one."]
    translations = ["Ein Satz in keinem Testsatz.", "Etwas.", german[10], "Etwas anderes.", "Ein dritter."]
    files = {"source": _write_lines(tmp_path / "p.en", sources),
             "translation": _write_lines(tmp_path / "p.de", translations), "lang": "de"}
    data = ParallelDataModule(parallel=[files, files], languages=["en"])  # listed twice: duplicates go too
    rows = data.parallel_rows()
    assert list(rows["source"]) == [sources[0], sources[4]]  # 1: Tatoeba English, 2: its German, 3: FLORES
    assert data.report["dropped_test_overlap"] == 3 and data.report["duplicates"] == 5
    kept = ParallelDataModule(parallel=[files], languages=["en"], exclude_test_sentences=False).parallel_rows()
    assert len(kept) == 5


def test_capped_per_language_and_mixed_with_pivot_pairs(tmp_path: Path) -> None:
    files = _parallel_files(tmp_path, 30)
    data = ParallelDataModule(parallel=[files], max_per_language=12, pivot_languages=["en", "de"],
                              max_source_pairs=3, mix_ratio=0.0, languages=["en"], exclude_test_sentences=False)
    rows = data.rows("train")
    parallel = [r for r in rows if not r["pivot_id"]]
    assert len(parallel) == 12 and len(rows) == 12 + 6
    assert all(r["src_a"] == r["src_b"] == r["text_a"] for r in parallel)  # both sides learn the source's vector
    assert all(r["gold"] != r["gold"] for r in parallel)  # NaN: no score for the score objectives


# ----------------------------------------------------------------------------------- the teacher-embedding cache


def test_embedding_cache_round_trip_resume_and_refusal(tiny_backbone: str, tmp_path: Path) -> None:
    from students import BiEncoder

    rng = random.Random(4)
    sentences = list(dict.fromkeys(sentence(rng) for _ in range(40)))
    folder = tmp_path / "emb"
    embedding_cache.build(tiny_backbone, sentences + sentences[:5], folder, shard_size=8)
    vectors = embedding_cache.read(folder, sentences, tiny_backbone)
    direct = BiEncoder(backbone=tiny_backbone).encode(sentences)
    assert torch.allclose(torch.tensor(vectors[sentences[7]]), direct[7], atol=1e-5)
    assert len(vectors) == len(sentences)
    # resume: a lost shard is recomputed, the others are read back
    shards = sorted(folder.glob("shard-*.parquet"))
    shards[1].unlink()
    encoded: list[int] = []
    real = BiEncoder.encode
    with mock.patch.object(BiEncoder, "encode", lambda self, texts, batch_size=32: encoded.append(len(texts)) or
                           real(self, texts, batch_size)):
        embedding_cache.build(tiny_backbone, sentences, folder, shard_size=8)
    assert encoded == [8]
    assert torch.allclose(torch.tensor(embedding_cache.read(folder, sentences)[sentences[9]]), direct[9], atol=1e-5)
    # stale: another teacher, or other sentences, in the same folder
    other = _other_bert(tiny_backbone, tmp_path / "other")
    with pytest.raises(CacheError, match=r"holds a cache made differently: teacher.content_sha256"):
        embedding_cache.build(other, sentences, folder, shard_size=8)
    # the same teacher reached by another path (a symlinked run folder) is the same teacher: kept, not refused
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_backbone)
    with mock.patch.object(BiEncoder, "encode", side_effect=AssertionError("re-encoded a complete cache")):
        embedding_cache.build(str(alias), sentences, folder, shard_size=8)
    assert embedding_cache.read(folder, sentences, str(alias)).keys() == vectors.keys()
    with pytest.raises(CacheError, match=r"is stale: data.fingerprint"):
        embedding_cache.read(folder, sentences[:-1])
    copy = tmp_path / "teacher-copy"
    shutil.copytree(tiny_backbone, copy)
    embedding_cache.build(str(copy), sentences, tmp_path / "emb2", shard_size=8)
    shutil.copy(Path(other) / "model.safetensors", copy / "model.safetensors")  # retrained in place
    with pytest.raises(CacheError, match=r"is stale: teacher.content_sha256"):
        embedding_cache.read(tmp_path / "emb2", sentences, str(copy))
    embedding_cache.build(other, sentences, folder, shard_size=8, overwrite=True)  # overwrite replaces it


# ------------------------------------------------------------------------------------------ translation accuracy


def test_bitext_retrieval_by_hand() -> None:
    # x = [(1,0), (0,1), (.6,.8)] against e = [(1,0), (0,1), (.8,.6)]: each x_i is nearest its own e_i, both ways.
    # Then e1 := (.6,.8): x2's cosines [.6, 1, .96] pick e1 (wrong), x0 and x1 stay right: xx->en 2/3;
    # e1's cosines with x [.6, .8, 1] pick x2 (wrong, its translation x1 is 2nd: nDCG 1/log2(3)): en->xx 2/3.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    assert bitext_retrieval(x, e)["accuracy"] == 1.0
    e[1] = torch.tensor([0.6, 0.8])
    assert bitext_retrieval(x, e)["accuracy"] == pytest.approx(2 / 3)
    back = bitext_retrieval(e, x)
    assert back["accuracy"] == pytest.approx(2 / 3)
    assert back["ndcg@10"] == pytest.approx((1 + 1 / torch.log2(torch.tensor(3.0)).item() + 1) / 3)
    same = torch.ones(4, 2)  # one vector for everything: every query ties with every candidate -> all wrong
    assert bitext_retrieval(same, same)["accuracy"] == 0.0


def test_translation_accuracy_of_an_imperfect_encoder_on_flores() -> None:
    rows = catalog.load("flores200/deu_Latn/dev").rows
    english, german = rows["source"][:400], rows["translation"][:400]
    index = {t: i for i, t in enumerate(english)}
    # every 4th German line (i % 4 == 0) is embedded as the NEXT English line; the others as their own
    index.update({t: (i + 1 if i % 4 == 0 else i) for i, t in enumerate(german)})

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([index[t] for t in texts]), 401).float()

    acc = translation_accuracy(encode, ["de"], "dev", max_sentences=400)
    # de->en: the misplaced quarter finds the wrong English line; the rest are right: 0.75.
    # en->de: English line i+1 ties between German i and i+1 (a tie is wrong), English line i (i % 4 == 0) has no
    # German line at all: two of every four are wrong: 0.5.
    assert acc == {"de-en": 0.75, "en-de": 0.5}


# ----------------------------------------------------------------------------------- a tiny alignment fit


def _fit_args(tiny: str, teacher: str, files: dict[str, str], out: Path, lr: float) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/alignment/student.yaml"),
            "--config", str(ROOT / "configs/alignment/smoke.yaml"),
            f"--model.init_args.student.init_args.backbone={tiny}", "--model.init_args.student.init_args.prefix=",
            f"--model.init_args.lr={lr}", "--model.init_args.warmup_ratio=0", "--data.init_args.parallel_languages=[]",
            f"--data.init_args.parallel=[{{source: {files['source']}, translation: {files['translation']}, "
            f"lang: de}}]", "--data.init_args.max_per_language=null", "--data.init_args.exclude_test_sentences=false",
            f"--data.init_args.teacher_embeddings={teacher}", "--data.init_args.batch_size=16",
            "--data.init_args.languages=[en]", "--data.init_args.val_cross=[]", "--data.init_args.max_val_pairs=8",
            "--trainer.max_epochs=4", "--trainer.precision=32-true", f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false", *QUIET]


def test_alignment_fit_pulls_translations_onto_the_teacher_below_an_lr0_control(
        tiny_backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from students import BiEncoder

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    files = _parallel_files(tmp_path, 64)
    teacher = _other_bert(tiny_backbone, tmp_path / "teacher")
    sources = read_parallel(files)["source"]
    translations = read_parallel(files)["translation"]
    target = BiEncoder(backbone=teacher).encode(sources)

    def distance(lr: float) -> float:
        with mock.patch("sys.argv", ["distill"]):
            done = run(_fit_args(tiny_backbone, teacher, files, tmp_path / f"lr{lr}", lr))
        student = done.model.student
        both = torch.cat([student.encode(sources), student.encode(translations)])
        return (both - torch.cat([target, target])).pow(2).sum(-1).mean().item()

    trained, control = distance(3e-3), distance(0.0)
    assert trained < 0.7 * control, (trained, control)


def test_teacher_of_another_width_is_refused_before_training(tiny_backbone: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    files = _parallel_files(tmp_path, 8)
    wide = _other_bert(tiny_backbone, tmp_path / "wide", width=48)
    with mock.patch("sys.argv", ["distill"]), pytest.raises(DataError, match=r"gives 48-d vectors but the student's "
                                                                               r"are 32-d"):
        run(_fit_args(tiny_backbone, wide, files, tmp_path / "run", 1e-3))
