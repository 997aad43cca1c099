"""The `distill` command: LightningCLI's Trainer verbs plus thin typed tools. Dispatch only."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import jsonargparse
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from distill import predict
from distill.checkpoints import CheckpointError, check_class_paths, check_fits, read_checkpoint
from distill.machine import run_precision
from distill.signals import Preempted, StopOnSigterm, stopped_message

# verb -> "module:function"; imported on use so `distill fit` does not pay for onnxruntime or matplotlib
TOOLS = {
    "cache": "distill.cache:main",
    "mine": "distill.mine:main",
    "bench": "distill.bench:main",
    "export": "distill.export:main",
    "sweep": "distill.sweep:main",
    "quickstart": "distill.quickstart:main",
    "prepare": "distill.prepare:main",
    "trim": "distill.trim:main",
}
TRAINER_VERBS = {
    "fit": "train a teacher or a student (model picked by class_path)",
    "validate": "evaluate on the validation split",
    "test": "evaluate on the test split",
    "predict": "teacher: scores for pairs; student: embeddings for texts (Parquet)",
}


class DistillCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: jsonargparse.ArgumentParser) -> None:
        # `distill predict` writes Parquet (teacher: pair_id, score; student: id, embedding)
        parser.add_argument("--predictions", type=str | None, default=None,
                            help="predict only: Parquet file to write the predictions to")
        parser.add_argument("--keep_precision", type=bool, default=False,
                            help="keep a bf16 trainer.precision on a CPU without bf16 instructions (default: 32-true "
                                 "there, where emulated bf16 is several times slower; distill.machine.run_precision)")
        # the datamodule tokenises exactly as the model does: its spec comes from the built model (a link, not a
        # config key); a datamodule without a `tokenization` argument is left alone
        parser.link_arguments("model", "data.init_args.tokenization", compute_fn=tokenization_of,
                              apply_on="instantiate")

    # Private LightningCLI hook (pytorch-lightning 2.6): it merges a --ckpt_path's hyperparameters into the config
    # before instantiation (PR #21116 / #21246, issues #20310, #20801); there is no public hook to check them
    # first (the proposed `adapt_checkpoint_hparams`, PR #21408, is unmerged), so we check, then call it.
    def _parse_ckpt_path(self) -> None:
        # LightningCLI (2.6) unpickles --ckpt_path here and lets the checkpoint's hyperparameters replace the
        # configured model; refuse a file that is not a checkpoint, or one of another model class, first
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (path and Path(path).is_file()):
            return
        hparams = read_checkpoint(path).get("hyper_parameters", {})
        # the merged hyperparameters are instantiated next (objectives accept any nn.Module): a checkpoint may
        # only name the project's own classes, or loading it would build whatever it names
        check_class_paths(hparams, path)
        saved = hparams.get("_class_path")
        configured = (self.config[subcommand].get("model") or {}).get("class_path")
        if saved and configured and saved != configured:
            raise CheckpointError(f"{path} is a checkpoint of {saved}, but the config's model is {configured}; "
                                  f"pass a checkpoint made with this config")
        super()._parse_ckpt_path()
        # jsonargparse also reads a bare string as a class path: check what the merge resolved to
        model = self.config[subcommand].get("model")
        check_class_paths(model.as_dict() if hasattr(model, "as_dict") else model, path, "model")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is not None and not config.get("keep_precision"):
            precision, why = run_precision(trainer.get("precision"), trainer.get("accelerator"))
            if why:
                trainer["precision"] = precision
                print(f"distill {self.subcommand or 'run'}: {why} (--keep_precision true keeps it)", file=sys.stderr,
                      flush=True)
        # refuse before the backbone is loaded: without a writer, predict would compute everything and keep nothing
        if self.subcommand == "predict" and not self.config["predict"].get("predictions") \
                and not _has_writer(self.config["predict"].get("trainer", {}).get("callbacks")):
            raise ValueError("predict has nowhere to write its output (it would compute every prediction and keep "
                             "none): pass --predictions <file.parquet>")

    def _check_checkpoint(self) -> None:
        # Lightning would fail deep inside with an unpickling error or a strict load_state_dict traceback
        path = self.config[self.subcommand].get("ckpt_path")
        if path == "last":
            path = _last_checkpoint(self.trainer)
            if path is not None:
                try:
                    read_checkpoint(path)
                except CheckpointError:
                    raise CheckpointError(
                        f"{path} (--ckpt_path last) is not a readable checkpoint: truncated or corrupt, e.g. the run "
                        f"was killed while saving it; delete it and pass an earlier checkpoint of {Path(path).parent} "
                        f"with --ckpt_path, or start afresh without --ckpt_path") from None
        if path and path not in ("last", "best", "hpc", "registry"):
            check_fits(self.model, read_checkpoint(path)["state_dict"], path)
        elif not path and self.subcommand in ("validate", "test") and self.trainer.is_global_zero:
            # zero-shot evaluation is legitimate, but must not pass for the evaluation of a trained model
            print(f"distill {self.subcommand}: no --ckpt_path: evaluating the model as configured (zero-shot, no "
                  f"trained weights loaded)", file=sys.stderr, flush=True)

    before_fit = before_validate = before_test = _check_checkpoint

    def before_predict(self) -> None:
        self._check_checkpoint()
        path = self.config["predict"].get("predictions")
        if path:
            self.trainer.callbacks.append(predict.ParquetWriter(path))

    # Private LightningCLI hook: SIGTERMException ends the process with status 0 under the pinned Lightning (issue
    # #19916; upstream PR #21623 gives it 143) and predict never stops on it; no public hook wraps a verb.
    def _run_subcommand(self, subcommand: str) -> None:
        # Lightning's SIGTERM ends fit as a SystemExit with status 0 and never stops predict: stop every verb
        # within a batch, keep a resumable checkpoint when fitting, and exit 143 (distill.signals)
        stop = StopOnSigterm()
        self.trainer.callbacks.append(stop)
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException as err:
            raise Preempted(stopped_message(subcommand, self.trainer, stop.saved)) from err

    # Private LightningCLI hook: the Trainer verbs' `weights_only` (PR #21072) defaults to None (torch's default
    # decides) and the CLI offers no public way to force it, so the kwargs are set here.
    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in kwargs:  # --ckpt_path is unpickled with tensors and plain types only, never code
            kwargs["weights_only"] = True
        return kwargs


def tokenization_of(model: pl.LightningModule) -> dict[str, Any] | None:
    """How `model` tokenises (`tokenization()`: tokenizer, max_length, joint, prefix), for the datamodule; None for
    a model without that method (the datamodule then asks the trainer's model, and says so if it cannot)."""
    return model.tokenization() if hasattr(model, "tokenization") else None


def _has_writer(callbacks: Any) -> bool:
    """Whether the configured trainer callbacks include a prediction writer of the user's own."""
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path = callback.get("class_path") if hasattr(callback, "get") else None
        module, _, name = str(class_path).rpartition(".")
        try:
            if issubclass(getattr(importlib.import_module(module), name), BasePredictionWriter):
                return True
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
    return False


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The file `--ckpt_path last` resolves to (Lightning's rule: the newest `last*.ckpt` of the checkpointers).

    Uses the private `ModelCheckpoint._find_last_checkpoints`, which Lightning's own "last" resolution calls
    (Lightning-AI/pytorch-lightning#14907); no public API names that file (Lightning-AI/pytorch-lightning#14740).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    found = {p for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
             for p in cb._find_last_checkpoints(trainer)}
    found = {p for p in found if os.path.isfile(p)}
    return max(found, key=os.path.getmtime) if found else None


def _bare_flags(tool: Any, args: list[str]) -> list[str]:
    """`--smoke` alone means `--smoke=true` for a tool's bool parameters (jsonargparse wants a value)."""
    flags = {f"--{name}" for name, p in inspect.signature(tool).parameters.items() if p.annotation in (bool, "bool")}
    out = []
    for i, arg in enumerate(args):
        following = args[i + 1].lower() if i + 1 < len(args) else ""
        out.append(f"{arg}=true" if arg in flags and following not in ("true", "false") else arg)
    return out


_NOISE = ("Given value", "Subtypes:", "Errors:", "Parser key", "- Problem with given class_path", "Does not validate",
          "Problem with given class_path")


def _cause(error: BaseException | str) -> str:
    """The one line a user needs from an error: ours when we raised it, else jsonargparse's innermost complaint.

    jsonargparse wraps an error raised while building a class_path part (or parsing a nested value) in lists of
    union alternatives, several levels deep; the useful line is the deepest one that is not about `NoneType`,
    prefixed with the full dotted key when the parser names it (`NestedArg(key=...)`).
    """
    chain, seen = [], error
    while isinstance(seen, BaseException) and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    message = "\n".join(str(e) for e in chain) if chain else str(error)
    if "Union subtypes" not in message and "Parser key" not in message:
        return message.splitlines()[0] if message else message
    bodies = [(line.strip().startswith("- "), line.strip().removeprefix("- ")) for line in message.splitlines()]
    useful = [(listed, body) for listed, body in bodies if body and not body.startswith(_NOISE)
              and "NoneType" not in body]
    ours = [body for listed, body in useful if listed]
    found = ours[0] if ours else useful[-1][1] if useful else message.splitlines()[0]
    if "<name>" in found:  # a weight refused while building: name the objective whose weight it is
        bad = [name for name, w in re.findall(r"'(\w+)': Namespace\(init_args=Namespace\(weight=([^,)]+)", message)
               if w.startswith("-") or w in ("nan", "inf")]
        found = found.replace("<name>", bad[0]) if bad else found
    nested = re.findall(r"NestedArg\(key='([^']+)', val='([^']*)'\)", message)
    top = re.search(r'Parser key "([^"]+)"', message)
    if nested and top:
        key, value = max(nested, key=lambda kv: len(kv[0]))
        return f"--{top.group(1)}.init_args.{key}={value}: {found}; fix it in the config or on the command line"
    return found


def tool(verb: str) -> Any:
    """The function behind a tool verb."""
    module, name = TOOLS[verb].split(":")
    return getattr(importlib.import_module(module), name)


def _help() -> str:
    lines = ["usage: distill <verb> [--config CONFIG.yaml] [options]", "", "Trainer verbs (LightningCLI):"]
    lines += [f"  {verb:<11} {text}" for verb, text in TRAINER_VERBS.items()]
    lines += ["", "Tools:"]
    for verb in TOOLS:
        try:
            doc = (tool(verb).__doc__ or "").strip().splitlines()[0]
        except ImportError as err:
            doc = f"(unavailable: {err})"
        lines.append(f"  {verb:<11} {doc}")
    lines += ["", "`distill <verb> --help` shows a verb's options; `--print_config` prints a resolved config.",
              "Errors end in one `distill: error:` line; set DISTILL_DEBUG=1 to get the full traceback instead.",
              "SIGTERM stops a verb within a batch (fit saves last.ckpt to resume from) and exits with status 143."]
    return "\n".join(lines)


# the module a missing import belongs to -> the extra that installs it (pyproject.toml)
EXTRAS = {"sentence_transformers": "export", "onnx": "export", "onnxruntime": "export", "onnxscript": "export",
          "sklearn": "sweeps", "jsonschema": "sweeps", "jsonref": "sweeps", "pydantic": "sweeps", "yaml": "sweeps",
          "sentencepiece": "multilingual", "faiss": "faiss", "matplotlib": "all", "accelerate": "all"}


def _debug() -> bool:
    return os.environ.get("DISTILL_DEBUG", os.environ.get("DISTILL_TRACEBACK")) == "1"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `distill` console script: an error ends in one line naming the problem and the fix
    (status 2; DISTILL_DEBUG=1 shows the full traceback instead); SIGTERM ends it with status 143."""
    try:
        run(argv, one_line_errors=True)
    except Preempted as stop:
        print(f"distill: {stop.message}", file=sys.stderr, flush=True)
        raise
    except ImportError as err:
        top = (err.name or "").split(".")[0]
        hinted = "pip install" in str(err)  # ours already name the extra (onnx_backend, export)
        if _debug() or not (hinted or top in EXTRAS):
            raise
        line = str(err).splitlines()[0] if hinted else (f"{top} is not installed ({err}); install it with "
                                                        f"pip install 'distill[{EXTRAS[top]}]'")
        print(f"distill: error: {line}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, argparse.ArgumentError, RuntimeError) as err:
        if _debug():
            raise
        # a RuntimeError is rarely the user's input: say how to see where it came from
        hint = " (set DISTILL_DEBUG=1 for the traceback)" if isinstance(err, RuntimeError) else ""
        print(f"distill: error: {_cause(err)}{hint}", file=sys.stderr)
        sys.exit(2)


def run(argv: list[str] | None = None, one_line_errors: bool = False) -> Any:
    """Run a verb; returns the LightningCLI (Trainer verbs) or the tool's result, for programmatic use.

    With `one_line_errors`, a config that does not parse raises `argparse.ArgumentError` (for `main` to print as
    one line) instead of printing usage and exiting."""
    # STS evaluation sets are small: torchmetrics' buffer warning does not apply; the LeafSpec deprecation is
    # Lightning's own (pytorch_lightning/utilities/_pytree.py) against torch 2.13
    warnings.filterwarnings("ignore", message=".*SpearmanCorrcoef` will save all targets.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    given = sys.argv[1:] if argv is None else argv
    if not given or given[0] in ("-h", "--help"):
        print(_help())
        return None
    if given[0] in TOOLS:
        fn = tool(given[0])
        return jsonargparse.CLI(fn, args=_bare_flags(fn, given[1:]), as_positional=False)
    # args=None reads sys.argv; passing both makes LightningCLI warn
    return DistillCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=argv, save_config_kwargs={"overwrite": True},
                      parser_kwargs={"exit_on_error": False} if one_line_errors else {})
