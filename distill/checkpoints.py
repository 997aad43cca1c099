"""Checkpoint checks: a file that is not a checkpoint, or holds another model, is a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.backbone_record import (
    EXTRA_STATE,
    CheckpointError,
    RecordsBackbone,
    check_backbone,
)
from distill.names import COSINE

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
    meta = {"class_path": class_path, "hyper_parameters": hp, "selected_mode": ckpt.get("selected_mode", COSINE)}
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
