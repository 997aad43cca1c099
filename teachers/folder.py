"""An off-the-shelf cross-encoder teacher: a local transformers sequence-classification folder or a
sentence-transformers CrossEncoder folder (`distill export`'s teacher output is one), used as it is.

It is a `teachers.CrossEncoder` whose backbone is the folder, head included, so `distill cache`, `predict`,
`validate` and `export` treat it as any teacher; what differs is where it comes from: no `distill fit` checkpoint,
so its fingerprint is the folder's content hash (`content_sha256`) in place of a checkpoint's sha256.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

from distill.score_cache import content_sha256
from teachers.cross_encoder import CrossEncoder


class TeacherFolderError(ValueError):
    """A folder that is not a usable cross-encoder; the message names the folder and the fix."""


def model_folder(folder: str | Path) -> Path:
    """The transformers folder inside `folder`: itself, or a sentence-transformers layout's Transformer module.

    Raises:
        TeacherFolderError: no such folder, or none holding a config.json.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TeacherFolderError(f"teacher folder {root} does not exist; give a transformers sequence-classification "
                                 f"folder or a sentence-transformers CrossEncoder folder (e.g. `distill export`'s)")
    if (root / "config.json").is_file():
        return root
    modules = root / "modules.json"
    if modules.is_file():  # older sentence-transformers layouts keep the transformer in a module subfolder
        for module in json.loads(modules.read_text()):
            sub = root / module.get("path", "")
            if "Transformer" in module.get("type", "") and (sub / "config.json").is_file():
                return sub
    raise TeacherFolderError(f"teacher folder {root} has no config.json (nor a sentence-transformers Transformer "
                             f"module holding one): not a transformers model folder")


def _stored_keys(folder: Path) -> set[str] | None:
    """Tensor names of the folder's safetensors files, from their headers (the weights are not read); None for a
    folder without safetensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for file in files:
        with file.open("rb") as f:
            keys |= set(json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))) - {"__metadata__"}
    return keys


def check_classifier(folder: Path) -> int:
    """The number of labels of a sequence-classification folder; anything else is refused.

    Raises:
        TeacherFolderError: its config names another architecture (a bare encoder, a student export, a language
            model) or none.
    """
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise TeacherFolderError(
            f"teacher folder {folder} holds {', '.join(architectures) or 'a model of unrecorded architecture'}, not a "
            f"sequence-classification model (a cross-encoder with its trained head); give a cross-encoder folder "
            f"(`distill export` of a teacher, a sentence-transformers CrossEncoder), or train one with `distill fit`")
    return len(config.get("id2label") or {}) or int(config.get("num_labels", 1))


def default_max_length(folder: Path) -> int:
    """The tokenizer's recorded `model_max_length` (sentence-transformers saves its `max_length` there), else 512,
    capped at the model's position embeddings."""
    config = json.loads((folder / "config.json").read_text())
    limit = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in ("roberta", "xlm-roberta", "mpnet", "camembert"):
        limit -= int(config.get("pad_token_id") or 0) + 1  # their position ids start after the padding index
    tokenizer_config = folder / "tokenizer_config.json"
    recorded = json.loads(tokenizer_config.read_text()).get("model_max_length") if tokenizer_config.is_file() else None
    # transformers writes a huge sentinel (1e30) when the length is unknown
    return min(int(recorded), limit) if isinstance(recorded, (int, float)) and recorded < 10**6 else min(512, limit)


class FolderCrossEncoder(CrossEncoder):
    """An off-the-shelf cross-encoder read from a folder, with the interface of `teachers.CrossEncoder`.

    Args:
        folder: a transformers sequence-classification folder, or a sentence-transformers CrossEncoder folder.
        max_length: tokens per pair (both texts together); default: the folder tokenizer's `model_max_length`
            (sentence-transformers saves its `max_length` there), capped at the model's positions.
        prefix: prepended to both texts of every pair, if the model was trained so.
        document_prefix: prepended instead to the second text (the document), if the model was trained so.
    """

    def __init__(self, folder: str, max_length: int | None = None, prefix: str = "",
                 document_prefix: str | None = None) -> None:
        path = model_folder(folder)
        num_labels = check_classifier(path)
        max_length = max_length or default_max_length(path)
        super().__init__(backbone=str(path), num_labels=num_labels, max_length=max_length, prefix=prefix,
                         document_prefix=document_prefix)
        # the fingerprint (`distill.cache.teacher_fingerprint`) reads these: the values in use, not the arguments
        self.hparams.update(folder=str(folder), backbone=str(path), num_labels=num_labels, max_length=max_length)
        self._check_head(path)

    def _check_head(self, path: Path) -> None:
        """Refuse a folder whose classifier weights are missing: transformers would make a fresh, random head (and
        `load_backbone` silences that warning, which is expected when a teacher is trained)."""
        stored = _stored_keys(path)
        if stored is None:
            return
        base = self.model.base_model_prefix
        head = [k for k in self.model.state_dict() if not k.startswith(base + ".")]
        missing = [k for k in head if k not in stored]
        if missing:
            raise TeacherFolderError(f"teacher folder {path} has no weights for the classifier head ({missing[0]!r} "
                                     f"is missing): it would score at random; give a cross-encoder trained with its "
                                     f"head, e.g. `distill export` of a teacher")

    @functools.cached_property
    def content_sha256(self) -> str:
        """The folder's content hash: this teacher's fingerprint where a trained one has its checkpoint's sha256."""
        return content_sha256(self.hparams.folder)

    def fingerprint_source(self) -> dict[str, Any]:
        """`checkpoint` and `checkpoint_sha256` of the cache manifest's teacher for a folder teacher (what
        `distill.cache.teacher_fingerprint` takes from `--ckpt_path` for a trained one)."""
        return {"checkpoint": str(self.hparams.folder), "checkpoint_sha256": self.content_sha256}
