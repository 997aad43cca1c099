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
from pytorch_lightning.cli import LightningCLI

from distill import predict
from distill.checkpoints import CheckpointError, check_fits, read_checkpoint

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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (2.6) unpickles --ckpt_path here and lets the checkpoint's hyperparameters replace the
        # configured model; refuse a file that is not a checkpoint, or one of another model class, first
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            saved = read_checkpoint(path).get("hyper_parameters", {}).get("_class_path")
            configured = (self.config[subcommand].get("model") or {}).get("class_path")
            if saved and configured and saved != configured:
                raise CheckpointError(f"{path} is a checkpoint of {saved}, but the config's model is {configured}; "
                                      f"pass a checkpoint made with this config")
        super()._parse_ckpt_path()

    def _check_checkpoint(self) -> None:
        # Lightning would fail deep inside with an unpickling error or a strict load_state_dict traceback
        path = self.config[self.subcommand].get("ckpt_path")
        if path and path not in ("last", "best", "hpc", "registry"):
            check_fits(self.model, read_checkpoint(path)["state_dict"], path)

    before_fit = before_validate = before_test = _check_checkpoint

    def before_predict(self) -> None:
        self._check_checkpoint()
        path = self.config["predict"].get("predictions")
        if path:
            self.trainer.callbacks.append(predict.ParquetWriter(path))


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
    lines += ["", "`distill <verb> --help` shows a verb's options; `--print_config` prints a resolved config."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `distill` console script: bad input ends in one line naming the problem and the fix
    (set DISTILL_TRACEBACK=1 for the full traceback)."""
    try:
        run(argv, one_line_errors=True)
    except (ValueError, FileNotFoundError, argparse.ArgumentError) as err:
        if os.environ.get("DISTILL_TRACEBACK") == "1":
            raise
        print(f"distill: error: {_cause(err)}", file=sys.stderr)
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
