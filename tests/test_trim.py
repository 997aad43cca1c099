"""`distill trim`: trimmed vocabularies that tokenise and embed covered text exactly as before.

Two tiny students: an XLM-R-like Unigram tokenizer (Metaspace, `<s> $A </s>`, pieces in four scripts) and the
WordPiece BERT tokenizer of conftest's tiny backbone, each on a random 2-layer, 32-wide BertModel.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

from distill import trim, trim_corpus, trim_folder, trim_vocab
from distill.names import DSE_HEAD, EXPORT_REPORT, MODEL_CARD, STUDENT_CONFIG, TRIM_REPORT
from distill.trim import TrimError
from students import BiEncoder

CORPUS = ["the cat sits on the mat.", "a dog plays in the park.", "qui joue au quiz?", "the man reads a book."]
COVERED = ["the dog sits on the mat.", "a cat plays quiz.", "qui reads the book?", "quiz"]
RUSSIAN = ["кошка сидит на коврике", "собака"]
OTHERS = ["猫坐在垫子上.", "η γάτα κάθεται."]
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def unigram_pieces() -> list[tuple[str, float]]:
    """Whole words score -2, single characters -8, the rarest piece -30 (it sets the unknown-token score).

    "quiz" is the trap: originally ▁q + u + iz (-24) beats ▁qui + <unk> (-2 + (-30 - 10)); in a vocabulary trimmed to
    the corpus the rarest kept piece scores -8, the unknown token -18, and ▁qui + <unk> (-20) would win.
    """
    words = {w.strip(".?") for t in CORPUS + COVERED for w in t.split()} - {"quiz", "plays"}
    chars = sorted({c for t in CORPUS + COVERED + RUSSIAN + OTHERS for c in t if not c.isspace()} - {"z"})
    pieces = [(p, 0.0) for p in SPECIALS] + [("▁", -3.0), ("▁play", -3.0), ("▁кошка", -4.0), ("垫子", -4.0)]
    pieces += [("▁" + w, -2.0) for w in sorted(words)] + [("▁q", -8.0), ("iz", -8.0)]
    pieces += [(c, -8.0) for c in chars] + [("▁xylophone", -30.0), ("<mask>", 0.0)]
    return pieces


def unigram_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    backend = Tokenizer(models.Unigram(unigram_pieces(), unk_id=3, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def tiny_model(folder: Path, vocab_size: int, pad_token_id: int) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=128, pad_token_id=pad_token_id)
              ).save_pretrained(folder)


@pytest.fixture(scope="module")
def unigram_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student folder on the Unigram tokenizer, with e5's "query: " prefix and a DSE head."""
    backbone = tmp_path_factory.mktemp("unigram-backbone")
    tokenizer = unigram_tokenizer()
    tokenizer.save_pretrained(backbone)
    tiny_model(backbone, len(tokenizer), pad_token_id=1)
    folder = tmp_path_factory.mktemp("unigram-student") / "student"
    BiEncoder(backbone=str(backbone), prefix="query: ", max_seq_length=64, dse_head=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(CORPUS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def trimmed(unigram_student: Path, corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trimmed") / "student"
    trim.main(str(unigram_student), str(out), corpus=[str(corpus_file)])
    return out


def tokens(folder: Path, texts: list[str], prefix: str = "") -> list[list[str]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [tok.convert_ids_to_tokens(tok(prefix + t)["input_ids"]) for t in texts]


def test_covered_text_keeps_its_pieces_and_embeddings(unigram_student: Path, trimmed: Path):
    """A trimmed vocabulary renumbered wrongly (or an embedding row sliced off by one) silently embeds every text
    as something else; covered text must give the same pieces, as strings, and the same embeddings."""
    assert tokens(trimmed, COVERED, "query: ") == tokens(unigram_student, COVERED, "query: ")
    before = BiEncoder.from_pretrained(unigram_student).encode(COVERED + CORPUS)
    after = BiEncoder.from_pretrained(trimmed)
    assert after.head is not None and after.config["prefix"] == "query: "
    assert torch.nn.functional.cosine_similarity(before, after.encode(COVERED + CORPUS)).min() >= 0.9999
    report = json.loads((trimmed / TRIM_REPORT).read_text())
    assert report["checks"]["min_cosine"] >= 0.9999 and report["prefixes"] == ["query: "]


def test_unigram_keeps_its_rarest_piece(unigram_student: Path, tmp_path: Path):
    """Dropping the rarest piece raises the unknown-token score (min score - 10), and `quiz` would turn into
    ▁qui + <unk> although all its original pieces are kept."""
    tok = trim_vocab.load_tokenizer(unigram_student)
    spec = json.loads(tok.backend_tokenizer.to_str())
    ids = [e.ids for e in trim_vocab.raw_backend(spec).encode_batch(CORPUS)]
    required = trim_vocab.required_ids(tok, spec, {}, unigram_student)
    kept, counts = trim_vocab.select_vocabulary(spec, ids, required)
    rarest = [p for p, _ in spec["model"]["vocab"]].index("▁xylophone")
    assert rarest in kept and counts["rarest_piece"] == 1

    def pieces_of(kept_ids: list[int]) -> list[str]:
        backend = trim_vocab.raw_backend(trim_vocab.trim_tokenizer(spec, kept_ids))
        return [backend.id_to_token(i) for i in backend.encode("quiz", add_special_tokens=False).ids]

    assert pieces_of(kept) == ["▁q", "u", "iz"]
    assert pieces_of([i for i in kept if i != rarest]) == ["▁qui", "<unk>"]  # the trap is real


def test_trimmed_folder_loads_with_transformers(unigram_student: Path, trimmed: Path):
    """A config whose vocab_size or a tokenizer whose special ids disagree with the sliced matrix loads with
    warnings (or index errors); specials must map to the same strings, and every number in the report must add up."""
    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(trimmed, add_pooling_layer=False, output_loading_info=True)
    assert not any(info.values()), info
    tok, original = AutoTokenizer.from_pretrained(trimmed), AutoTokenizer.from_pretrained(unigram_student)
    for name in ("pad", "unk", "cls", "sep", "bos", "eos", "mask"):
        token = getattr(original, f"{name}_token")
        assert getattr(tok, f"{name}_token") == token
        assert tok.convert_ids_to_tokens(getattr(tok, f"{name}_token_id")) == token
    assert model.config.pad_token_id == tok.pad_token_id == 1  # XLM-R counts positions from pad: it must not move

    report = json.loads((trimmed / TRIM_REPORT).read_text())
    assert report["vocab_size"]["after"] == len(tok) == model.get_input_embeddings().num_embeddings
    assert report["vocab_size"]["after"] < report["vocab_size"]["before"] == len(original)
    assert report["parameters"]["after"] == sum(p.numel() for p in model.parameters())
    assert report["parameters"]["before"] - report["parameters"]["after"] == 32 * (len(original) - len(tok))
    size = report["size_bytes"]
    assert size["after"] < size["before"] and size["reduction"] == round(1 - size["after"] / size["before"], 4)
    assert report["kept"]["total"] == len(tok) and report["kept"]["special"] == 5


def test_sentence_transformers_loads_an_exported_folder(unigram_student: Path, corpus_file: Path, tmp_path: Path):
    """An exported folder keeps its sentence-transformers modules and card, and loses its ONNX graphs (they hold the
    old vocabulary) and parity report; sentence-transformers must embed the trimmed folder like the original."""
    from sentence_transformers import SentenceTransformer

    from distill.st_modules import write_sentence_transformers_config

    exported = tmp_path / "exported"
    shutil.copytree(unigram_student, exported)
    options = json.loads((exported / STUDENT_CONFIG).read_text())
    write_sentence_transformers_config(exported, options, 32)
    (exported / "onnx").mkdir()
    (exported / "onnx" / "model.onnx").write_bytes(b"old vocabulary")
    (exported / EXPORT_REPORT).write_text("{}")
    (exported / MODEL_CARD).write_text("# model card\n")
    out = tmp_path / "trimmed"
    report = trim.main(str(exported), str(out), corpus=[str(corpus_file)])
    assert report["dropped_files"] == [EXPORT_REPORT, "onnx"] and not (out / "onnx").exists()
    assert "## Vocabulary trimming" in (out / MODEL_CARD).read_text()  # the card says its figures predate trimming
    assert (out / DSE_HEAD).is_file() and (out / "1_Pooling" / "config.json").is_file()
    reference = BiEncoder.from_pretrained(unigram_student).encode(COVERED)
    got = SentenceTransformer(str(out), device="cpu").encode(COVERED, convert_to_tensor=True).float()
    assert torch.nn.functional.cosine_similarity(reference, got).min() >= 0.9999


def test_wordpiece_backbone(tiny_backbone: str, tmp_path: Path):
    """A plain WordPiece backbone folder: the dict vocabulary and vocab.txt are renumbered together; top_n has no
    frequencies to rank by."""
    student = Path(tiny_backbone)
    corpus = tmp_path / "train.csv"
    corpus.write_text("text_a,text_b,label\na man plays guitar.,the dog runs in the park.,3\n")
    covered = ["the man runs in the park.", "a dog plays guitar."]
    with pytest.raises(TrimError, match="WordPiece vocabulary carries no frequencies"):
        trim.main(str(student), str(tmp_path / "top"), corpus=[str(corpus)], top_n=5)
    out = tmp_path / "trimmed"
    report = trim.main(str(student), str(out), corpus=[str(corpus)])
    assert tokens(out, covered) == tokens(student, covered)
    assert tokens(out, ["a cat sings."]) == [["[CLS]", "a", "[UNK]", "[UNK]", ".", "[SEP]"]]
    vocab = (out / "vocab.txt").read_text().split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) == report["vocab_size"]["after"]
    before, after = BiEncoder(backbone=str(student)).encode(covered), BiEncoder(backbone=str(out)).encode(covered)
    assert torch.nn.functional.cosine_similarity(before, after).min() >= 0.9999


def test_dropping_a_special_token_is_an_error_naming_it(unigram_student: Path, tmp_path: Path):
    """A kept set without <mask> would write a tokenizer whose mask id points at another piece."""
    tok = trim_vocab.load_tokenizer(unigram_student)
    spec = json.loads(tok.backend_tokenizer.to_str())
    required = trim_vocab.required_ids(tok, spec, {}, unigram_student)
    mask = tok.mask_token_id
    kept = [i for i in range(len(tok)) if i != mask]
    with pytest.raises(TrimError, match=rf"drops special token\(s\) '<mask>' \(id {mask}\)"):
        trim_folder.write_trimmed(unigram_student, tmp_path / "out", spec, kept, required)


def test_a_tokenizer_without_unknown_token_is_refused(unigram_student: Path):
    """Without an unknown token, text outside the kept pieces could not be encoded at all."""
    spec = json.loads(trim_vocab.load_tokenizer(unigram_student).backend_tokenizer.to_str())
    spec["model"]["unk_id"] = None
    with pytest.raises(TrimError, match="has no unknown token"):
        trim_vocab.unknown_id(spec, unigram_student)


def test_uncovered_text_warns_with_its_unknown_share(unigram_student: Path, trimmed: Path):
    """Russian text after trimming to English/French is nothing but <unk>: a silent trim would ship a model that
    embeds every Russian sentence alike."""
    spec = json.loads(trim_vocab.load_tokenizer(unigram_student).backend_tokenizer.to_str())
    trimmed_spec = json.loads((trimmed / "tokenizer.json").read_text())
    old = {t: i for i, t in trim_vocab.pieces(spec).items()}
    new_id = {old[t]: i for i, t in trim_vocab.pieces(trimmed_spec).items()}
    coverage = trim_corpus.measure_coverage(spec, trimmed, new_id, {"ru": RUSSIAN, "en": COVERED})
    assert coverage["en"]["coverage_after"] == coverage["en"]["covered_texts"] == 1.0
    assert coverage["en"]["unknown_after"] == 0.0
    assert coverage["ru"]["coverage_before"] == 1.0 and coverage["ru"]["unknown_texts"] == 1.0
    with pytest.warns(UserWarning, match=r"ru: 100\.0% of its texts are entirely outside the trimmed vocabulary \("
                                         r"\d+\.\d% of its tokens unknown\)") as record:
        trim_corpus.warn_uncovered(coverage)
    assert len(record) == 1


def test_refusals_leave_nothing_behind(unigram_student: Path, corpus_file: Path, tmp_path: Path, monkeypatch):
    """An existing --out is refused; an empty corpus names its file; a failed check leaves no half-written folder."""
    (tmp_path / "exists").mkdir()
    with pytest.raises(TrimError, match="exists; pass --overwrite"):
        trim.main(str(unigram_student), str(tmp_path / "exists"), corpus=[str(corpus_file)])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(TrimError, match=f"{empty}: no text"):
        trim.main(str(unigram_student), str(tmp_path / "out"), corpus=[str(empty)])
    with pytest.raises(TrimError, match="no corpus"):
        trim.main(str(unigram_student), str(tmp_path / "out"))
    with pytest.raises(TrimError, match="test set"):
        trim.main(str(unigram_student), str(tmp_path / "out"), corpus=["stsb/test"])

    def broken(*args, **kwargs):
        raise TrimError("parity failed")

    monkeypatch.setattr(trim, "check_trimmed", broken)
    with pytest.raises(TrimError, match="parity failed"):
        trim.main(str(unigram_student), str(tmp_path / "out"), corpus=[str(corpus_file)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "exists"]


def test_cli_trims_to_training_sentences_of_the_given_languages(tiny_backbone: str, tmp_path: Path):
    """`--languages` must read training sentences only (test sentences would flatter the coverage it reports), and
    coverage is measured on the test and Tatoeba sets of those languages."""
    from distill import multilingual
    from distill.cli import main

    student = tmp_path / "student"
    BiEncoder(backbone=tiny_backbone).save_pretrained(student)
    out = tmp_path / "trimmed"
    # the sentences themselves are test_multilingual's business; here: which split trim asks for
    with mock.patch("sys.argv", ["distill"]), warnings.catch_warnings(), \
            mock.patch.object(multilingual, "texts", return_value=["a man plays guitar."] * 3) as texts:
        warnings.simplefilter("ignore")  # the tiny English vocabulary covers little of STS-B
        main(["trim", "--model", str(student), "--out", str(out), "--languages", "[en]",
              "--eval_languages", "[en, de]"])
    texts.assert_called_once_with(["en"], "train")
    report = json.loads((out / TRIM_REPORT).read_text())
    assert list(report["coverage"]) == ["stsb_multi_mt/test/en", "stsb_multi_mt/test/de", "tatoeba/de-en"]
    assert report["corpus"] == {"sources": ["stsb_multi_mt/train (en)"], "texts": 3}
    assert report["vocab_size"]["after"] == 5 + 5  # the specials and "a man plays guitar ."


def test_tied_output_embeddings_are_sliced_with_the_input_rows(tiny_backbone: str, tmp_path: Path):
    """A masked-LM head ties its decoder to the word embeddings and has a per-token bias: left unsliced, the model
    would not load (shape mismatch) or would score the wrong tokens."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    backbone = tmp_path / "mlm"
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(backbone)
    torch.manual_seed(0)
    original = BertForMaskedLM(BertConfig(vocab_size=41, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, max_position_embeddings=128))
    with torch.no_grad():
        original.cls.predictions.bias.normal_()  # a zero bias would hide a missing slice
    original.save_pretrained(backbone)
    corpus = tmp_path / "train.txt"
    corpus.write_text("a man plays guitar.\n")
    trim.main(str(backbone), str(tmp_path / "out"), corpus=[str(corpus)])
    model, info = BertForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tok, kept_tok = AutoTokenizer.from_pretrained(backbone), AutoTokenizer.from_pretrained(tmp_path / "out")
    kept = tok.convert_tokens_to_ids(kept_tok.convert_ids_to_tokens(list(range(len(kept_tok)))))
    with torch.no_grad():
        before = original.eval()(**tok("a man plays guitar.", return_tensors="pt")).logits[..., kept]
        after = model.eval()(**kept_tok("a man plays guitar.", return_tensors="pt")).logits
    assert torch.allclose(before, after, atol=1e-5)
