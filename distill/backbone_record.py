"""The backbone record: what a model built from a backbone folder remembers of it, and the check against it.

`RecordsBackbone` is mixed into `students.BiEncoder` and `teachers.CrossEncoder`: their state dict, and so every
checkpoint, carries the fingerprint of the folder (tokenizer hash, weights' dtype, config), and loading one refuses a
folder that changed since. A leaf module (torch and stdlib only): models import it, and it imports nothing of
theirs nor of the pipeline; `distill.checkpoints` (loading checkpoints) builds on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the configured model; the message names the file and the fix.

    Defined here because `check_backbone` raises it; callers import it from `distill.checkpoints`."""


#: what of a backbone folder changes a rebuilt model although its weights' names and shapes still fit the checkpoint
#: (the state dict overwrites the weights, not the tokenizer nor the dtype they are loaded into)
COMPARED = ("tokenizer", "dtype", "model_type", "vocab_size", "hidden_size", "num_hidden_layers")
EXTRA_STATE = "_extra_state"  # torch's key for `get_extra_state` in a state dict


def tokenizer_hash(tok: Any) -> str:
    """Hash of what a loaded tokenizer does (vocabulary, normaliser, model), not of where it lives; a checkpoint
    check hashes the folder as it is now, `distill.data.tokenizer_fingerprint` a path's (cached) tokenizer."""
    if tok.is_fast:  # the serialised tokenizer records the truncation/padding of its last call: leave those out
        spec = {k: v for k, v in json.loads(tok.backend_tokenizer.to_str()).items()
                if k not in ("truncation", "padding")}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()


def weights_dtype(folder: str | Path, model: nn.Module) -> str:
    """The dtype the backbone's weights are stored in, from the safetensors headers (not the multi-GB weights)."""
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    found = set()
    for file in sorted(Path(folder).glob("*.safetensors")):
        with file.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        found |= {names[v["dtype"]] for k, v in header.items() if k != "__metadata__" and v["dtype"] in names}
    # no safetensors (a .bin folder): the dtype its config records, not the live one, which bf16-true training changes
    return "+".join(sorted(found)) or str(getattr(model.config, "dtype", None) or "unrecorded").removeprefix("torch.")


class RecordsBackbone:
    """Mixed into a model built from a backbone folder (`students.BiEncoder`, `teachers.CrossEncoder`): its state
    dict, and so every checkpoint, carries the fingerprint of that folder (`get_extra_state`), and loading one
    refuses a folder whose tokenizer, weights' dtype or config changed since (issue 15 item 2).

    The record is a uint8 tensor of JSON: everything that reads a state dict (Lightning, `check_fits`, tests that
    perturb weights) expects tensors.
    """

    backbone_path: str

    def _backbone_parts(self) -> tuple[nn.Module, Any]:  # the transformers model and the tokenizer
        raise NotImplementedError

    @functools.cached_property
    def backbone_fingerprint(self) -> dict[str, Any]:
        """The folder as it is now; computed once per model (the tokenizer is hashed, the weights are not read)."""
        model, tok = self._backbone_parts()
        config = model.config
        return {"backbone": self.backbone_path, "tokenizer": tokenizer_hash(tok),
                "dtype": weights_dtype(self.backbone_path, model), "model_type": config.model_type,
                **{k: getattr(config, k, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}}

    def get_extra_state(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(json.dumps(self.backbone_fingerprint).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        check_backbone(self, state, "the checkpoint")

    @staticmethod
    def _allow_unrecorded(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the record have no key: strict loading (Lightning's resume) would refuse them
        state.setdefault(prefix + EXTRA_STATE, torch.empty(0, dtype=torch.uint8))


@functools.cache
def _warn_unrecorded() -> None:
    warnings.warn("this checkpoint predates the backbone fingerprint (tokenizer, dtype): the backbone folder it is "
                  "rebuilt from is not checked against the one it was trained with", stacklevel=3)


def check_backbone(model: RecordsBackbone, recorded: torch.Tensor | None, path: str | Path) -> None:
    """Refuse a backbone folder that differs from the one `recorded` (a `get_extra_state` tensor) describes."""
    if recorded is None or recorded.numel() == 0:
        _warn_unrecorded()
        return
    old = json.loads(bytes(recorded.tolist()).decode())
    new = model.backbone_fingerprint
    # another folder than the recorded one is the config's explicit choice (the score cache checks its own tokenizer
    # hash); the silent change is the same path holding something else: moved, re-prepared, trimmed
    if Path(old["backbone"]).resolve() != Path(new["backbone"]).resolve():
        return
    for field in COMPARED:
        if old.get(field) != new.get(field):
            shown = (old.get(field), new.get(field))
            if field == "tokenizer":
                shown = tuple(f"sha256 {v[:12]}" for v in shown)
            raise CheckpointError(
                f"{path}: backbone {new['backbone']} has changed since this model was trained: its {field} is "
                f"{shown[1]} (was {shown[0]}); re-prepare that folder as it was (e.g. without --fp16, untrimmed) or "
                f"put the original back at that path")
