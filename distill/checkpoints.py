"""Checkpoint checks: a file that is not a checkpoint, or holds another model, is a one-line error."""

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
    """A checkpoint that cannot be used for the configured model; the message names the file and the fix."""


# A checkpoint's hyperparameters name the classes that rebuild the model: only the project's own may be built
# from them, or loading a file would run whatever callable it names (`os.system`, `subprocess.Popen`, ...)
TRUSTED_MODULES = ("teachers", "students", "distill.module", "distill.losses")


def is_trusted(class_path: str) -> bool:
    """Whether `class_path` names something inside one of the project's model/objective modules."""
    module = class_path.rpartition(".")[0]
    return any(module == m or module.startswith(m + ".") for m in TRUSTED_MODULES)


def check_class_paths(hparams: Any, path: str | Path, key: str = "") -> None:
    """Refuse hyperparameters that name a class outside TRUSTED_MODULES, at any depth, before anything is built."""
    if isinstance(hparams, dict):
        for name, value in hparams.items():
            if name in ("class_path", "_class_path") and not (isinstance(value, str) and is_trusted(value)):
                raise CheckpointError(
                    f"{path}: its hyperparameters name {value!r} ({key or 'model'}), which is not a distill model, "
                    f"student or objective class; refusing to build it: pass a checkpoint that `distill fit` wrote")
            check_class_paths(value, path, f"{key}.{name}" if key else str(name))
    elif isinstance(hparams, (list, tuple)):
        for i, value in enumerate(hparams):
            check_class_paths(value, path, f"{key}[{i}]")


def _trusted_class(class_path: str, path: str | Path) -> type[nn.Module]:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: its hyperparameters name {class_path!r}, which does not exist here; "
                              f"pass a checkpoint made with this version of distill") from None
    # a trusted module also holds what it imported (torch, transformers): the class must be defined in ours
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and is_trusted(f"{cls.__module__}.x")):
        raise CheckpointError(f"{path}: its hyperparameters name {class_path!r}, which is not a distill model, "
                              f"student or objective class; refusing to build it: pass a checkpoint that "
                              f"`distill fit` wrote")
    return cls


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU (tensors and plain types only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["state_dict"]  # noqa: B018 - what makes it a Lightning checkpoint
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint; pass the .ckpt that `distill fit` wrote") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a Lightning checkpoint ({type(err).__name__}); pass the .ckpt that "
                              f"`distill fit` wrote") from None
    return ckpt


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights whose names or shapes differ from `model`'s (e.g. a student's checkpoint for a teacher)."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(EXTRA_STATE)}
    records = {k: v for k, v in state.items() if k.endswith(EXTRA_STATE)}
    state = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE)}
    # first: a trimmed folder's other vocabulary size is better named as such than as reshaped embeddings
    for name, part in model.named_modules():
        if isinstance(part, RecordsBackbone):
            check_backbone(part, records.get(f"{name}.{EXTRA_STATE}" if name else EXTRA_STATE), path)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        backbone = getattr(model, "hparams", {}).get("backbone")
        raise CheckpointError(
            f"{path}: its weights do not fit {type(model).__name__}{f'({backbone})' if backbone else ''} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} reshaped keys, e.g. {example!r}); "
            f"pass a checkpoint made with this model config"
        )


def _rebuild(cls: type[nn.Module], init_args: dict[str, Any], path: str | Path) -> Any:
    """`cls(**init_args)`; a backbone folder that is no longer where the checkpoint recorded it is one line."""
    try:
        return cls(**init_args)
    except FileNotFoundError as err:
        from distill.backbones import ALIASES, SHORT_NAMES

        backbone = init_args.get("backbone")
        if backbone in ALIASES or backbone in SHORT_NAMES:  # a short name's package is missing: its own fix
            raise CheckpointError(f"{path}: {err}") from None
        raise CheckpointError(f"{path}: it was trained on backbone {backbone}, which is not there any more (moved or "
                              f"deleted); put that folder back at {backbone} (as it was: the tokenizer and dtype "
                              f"are checked) or re-create it there with `distill prepare`") from None


def load_model(path: str | Path) -> tuple[str, nn.Module, dict[str, Any]]:
    """Rebuild the model a `distill fit` checkpoint holds, with its weights, in eval mode.

    Returns (`teacher` | `student`, the `CrossEncoder` LightningModule or the `BiEncoder`, metadata: the class
    path, the hyperparameters and, for students, the scoring mode chosen on validation data).
    """
    ckpt = read_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters", {}))
    check_class_paths(hp, path)
    class_path = hp.pop("_class_path", None)
    hp.pop("_instantiator", None)
    state = ckpt["state_dict"]
    meta = {"class_path": class_path, "hyper_parameters": hp, "selected_mode": ckpt.get("selected_mode", "cosine")}
    if any(k.startswith("student.") for k in state):
        spec = hp.get("student")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise CheckpointError(f"{path}: a student checkpoint without its student config (made outside "
                                  f"`distill fit`); pass a checkpoint that `distill fit` wrote")
        student = _rebuild(_trusted_class(spec["class_path"], path), spec.get("init_args", {}), path)
        own = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        check_fits(student, own, path)
        student.load_state_dict(own)
        return "student", student.eval(), meta
    if any(k.startswith("model.") for k in state) and "backbone" in hp:
        from teachers.cross_encoder import CrossEncoder

        init_args = {k: v for k, v in hp.items() if k in CrossEncoder.__init__.__code__.co_varnames}
        teacher = _rebuild(CrossEncoder, init_args, path)
        check_fits(teacher, state, path)
        teacher.load_state_dict(state)
        return "teacher", teacher.eval(), meta
    raise CheckpointError(f"{path}: neither a teacher (CrossEncoder) nor a student (DistillModule) checkpoint; "
                          f"pass a checkpoint that `distill fit` wrote")
