"""DistillModule: a bi-encoder student trained on cached teacher scores and gold labels by named objectives.

Two batch layouts reach `training_step`: pairs (`a_*`, `b_*`: `PairDataModule`) and groups (`q_*`, `c_*`: a
query and its 1 + k candidates, `GroupDataModule`). Each objective says what it consumes (`inputs`):
`pair_scores` (the student's score per pair, or per (query, candidate) in a group), `group_scores` (a
(batch, 1 + k) score matrix: groups only) or `embeddings` (query, positive, negatives).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.regression import SpearmanCorrCoef

from distill.evaluation import SpearmanByMode, compute_sets
from distill.losses import Matryoshka2D, ScoreRegression
from distill.losses.matryoshka import resolve_points
from distill.losses.score_regression import check_weight
from distill.names import COSINE
from distill.optim import adamw_with_warmup
from students import BiEncoder, StaticStudent


class DistillModule(pl.LightningModule):
    """Distil a teacher into a bi-encoder student.

    Each objective is keyed by name, so every weight has a dotted CLI key that a sweep can set, e.g.
    `--model.init_args.objectives.teacher_mse.init_args.weight=0.7`. Each term is logged as `train/{name}`.

    Args:
        student: the student being trained (`students.BiEncoder`, or `students.StaticStudent`: token vectors,
            mean-pooled, no attention; give it a larger `lr`, e.g. 0.05).
        objectives: name -> objective (`distill.losses`); default: gold-label regression only.
        lr: peak learning rate of the encoder.
        head_lr: peak learning rate of the DSE head (randomly initialised, so it needs a larger one).
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_ratio: share of optimiser steps spent warming up, then linear decay to 0.
        gradient_checkpointing: recompute the encoder's activations in the backward pass (less memory for
            long sequences or big batches, ~30% more compute).
    """

    def __init__(
        self,
        student: BiEncoder | StaticStudent,
        objectives: dict[str, nn.Module] | None = None,
        lr: float = 2e-5,
        head_lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "objectives"] if not _under_cli(self) else None)
        self.student = student
        if objectives is not None and not objectives:
            raise ValueError("model.init_args.objectives is empty; name at least one objective, or leave it unset "
                             "for gold-label regression")
        self.objectives = nn.ModuleDict(objectives or {"gold_mse": ScoreRegression(target="gold")})
        for name, objective in self.objectives.items():
            if getattr(objective, "inputs", None) not in ("pair_scores", "group_scores", "embeddings",
                                                          "embedding_targets"):
                raise ValueError(f"model.init_args.objectives.{name} is a {type(objective).__name__}, not a "
                                 f"distill objective; use a class from distill.losses")
            try:
                check_weight(objective.weight)
            except ValueError:  # set after construction (e.g. by a sweep): name this objective's key
                raise ValueError(f"model.init_args.objectives.{name}.init_args.weight is {objective.weight!r}; "
                                 f"expected a finite number >= 0") from None
        # name -> resolved (layers, dims) points of each Matryoshka2D objective, checked against the student now
        self._points: dict[str, list[tuple[int, int]]] = {}
        for name, objective in self.objectives.items():
            if isinstance(objective, Matryoshka2D):
                if not hasattr(student, "embed_points"):
                    raise ValueError(f"model.init_args.objectives.{name} is a Matryoshka2D, which needs a transformer "
                                     f"student's layers (students.BiEncoder); remove it for a "
                                     f"{type(student).__name__}")
                key = f"model.init_args.objectives.{name}.init_args.points"
                self._points[name] = resolve_points(objective.points, student.depth, student.width, key)
                cut = [p for p in self._points[name] if p[1] != student.width]
                if objective.inputs == "embedding_targets" and cut:
                    raise ValueError(f"{key}: {objective.objective.__class__.__name__} regresses onto the teacher's "
                                     f"{student.width}-d vectors, so every point needs the full width (null); "
                                     f"{[list(p) for p in cut]} cut it")
        if all(o.weight == 0 for o in self.objectives.values()):
            raise ValueError("every objective has weight 0: nothing would be trained; set a weight > 0")
        self.val_metrics = SpearmanByMode(student.modes)
        self.test_metrics = SpearmanByMode(student.modes)
        # each Matryoshka point's own cosine Spearman (`{split}/spearman_cosine/<layers>x<dims>`): what a point's
        # weights are tuned on, without exporting it; the full student's keys above stay the selection key
        self._eval_points = sorted({p for points in self._points.values() for p in points})
        self.point_metrics = nn.ModuleDict({split: nn.ModuleDict({_point_key(p): SpearmanCorrCoef()
                                                                  for p in self._eval_points})
                                            for split in ("val", "test")})
        # multilingual data: split -> set name (`de`, `de-en`) -> metrics, made in setup from the datamodule
        self.set_metrics = nn.ModuleDict({"val": nn.ModuleDict(), "test": nn.ModuleDict()})
        self._memo: dict[tuple[int, ...], Tensor] = {}  # text (token ids) -> embedding, within one eval epoch
        # the scoring mode used for `{split}/spearman`: chosen on validation data, saved in checkpoints
        self.selected_mode = COSINE
        if gradient_checkpointing:
            # non-reentrant: works with inputs that need no grad and under DDP (torch's recommended form);
            # transformers 5 renamed the switch, older releases only have gradient_checkpointing_enable
            encoder = getattr(student, "encoder", None)
            if encoder is None:
                raise ValueError(f"model.init_args.gradient_checkpointing is for transformer students; a "
                                 f"{type(student).__name__} has no activations to recompute: set it to false")
            if hasattr(encoder, "activation_checkpointing_enable"):
                encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def setup(self, stage: str) -> None:
        # fail before the first step (and before any epoch of work) when an objective's inputs cannot come
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage in ("fit", "validate", "test") and data is not None and hasattr(data, "eval_sets"):
            self._make_set_metrics(data)
        if stage != "fit" or data is None:
            return
        grouped = hasattr(data.hparams, "n_negatives")
        for name, objective in self.objectives.items():
            if objective.weight == 0:
                continue
            if getattr(objective, "target", None) == "teacher" and not data.hparams.get("cache_dir"):
                raise ValueError(f"objective {name!r} needs teacher scores: set data.init_args.cache_dir to a score "
                                 f"cache (run `distill cache` first), or set "
                                 f"model.init_args.objectives.{name}.init_args.weight=0")
            if objective.inputs == "embedding_targets" and (grouped or not data.hparams.get("teacher_embeddings")):
                raise ValueError(f"objective {name!r} ({type(objective).__name__}) needs teacher embeddings of the "
                                 f"source sentences: use data.class_path distill.multilingual.MultilingualDataModule "
                                 f"with data.init_args.teacher_embeddings set, or set "
                                 f"model.init_args.objectives.{name}.init_args.weight=0")
            if objective.inputs == "group_scores" and not grouped:
                raise ValueError(f"objective {name!r} ({type(objective).__name__}) needs grouped data (a query with "
                                 f"1 + k candidates): use data.class_path distill.data.GroupDataModule, or set "
                                 f"model.init_args.objectives.{name}.init_args.weight=0")


    def _make_set_metrics(self, data: Any) -> None:
        # one metric per named evaluation set (a language, or xx-en), made before any step so every DDP rank
        # holds the same metrics (torchmetrics syncs them at compute)
        for split in ("val", "test"):
            names = data.eval_sets(split)
            self.set_metrics[split] = nn.ModuleDict({n: SpearmanByMode(self.student.modes) for n in names})
        self.set_metrics.to(self.device)

    def tokenization(self) -> dict[str, Any]:
        return self.student.tokenization()

    def _encode_pair(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:  # validation, test
        # both sides in one forward pass (the collator pads them to one width)
        ids = torch.cat([batch["a_input_ids"], batch["b_input_ids"]])
        mask = torch.cat([batch["a_attention_mask"], batch["b_attention_mask"]])
        if "eval_set" in batch:
            u, v = self._embed_memoised(ids, mask).chunk(2)
        else:
            u, v = self.student(ids, mask).chunk(2)  # (batch, dim) each
        return self.student.scores(u, v)  # mode -> (batch,)

    def _embed_memoised(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Embeddings of evaluation texts, each distinct text encoded once per epoch: multilingual sets repeat
        texts (`de-en` pairs German first sides with English second sides), which halves the test's cost."""
        keys = [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        todo = [i for i, k in enumerate(dict.fromkeys(keys)) if k not in self._memo]
        unique = list(dict.fromkeys(keys))
        if todo:
            rows = [keys.index(unique[i]) for i in todo]
            emb = self.student(ids[rows], mask[rows])
            self._memo.update({unique[i]: e for i, e in zip(todo, emb)})
        return torch.stack([self._memo[k] for k in keys])

    def _group_view(self, emb: Tensor, size: int, scores: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        # the queries' then the candidates' embeddings, from one forward pass (the collator pads them to one width)
        query, candidates = emb[:size], emb[size:].view(size, -1, emb.shape[-1])  # (B, dim), (B, 1 + k, dim)
        n = candidates.shape[1]
        flat = scores(query.unsqueeze(1).expand(-1, n, -1).reshape(size * n, -1), candidates.reshape(size * n, -1))
        return query, candidates, {mode: s.view(size, n) for mode, s in flat.items()}  # mode -> (B, 1 + k)

    def _view(self, emb: Tensor, queries: int, grouped: bool,
              scores: Any) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """(query, positive, negatives or None, mode -> scores) from the embeddings of a training batch whose first
        `queries` rows are the queries (or first sides)."""
        if grouped:
            query, candidates, by_mode = self._group_view(emb, queries, scores)
            return query, candidates[:, 0], candidates[:, 1:] if candidates.shape[1] > 1 else None, by_mode
        query, positive = emb.chunk(2)  # (batch, dim) each
        return query, positive, None, scores(query, positive)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        grouped = "q_input_ids" in batch
        first, second = ("q", "c") if grouped else ("a", "b")
        ids = torch.cat([batch[f"{first}_input_ids"], batch[f"{second}_input_ids"]])
        mask = torch.cat([batch[f"{first}_attention_mask"], batch[f"{second}_attention_mask"]])
        queries = batch[f"{first}_input_ids"].shape[0]
        points = sorted({p for name, ps in self._points.items() if self.objectives[name].weight != 0 for p in ps})
        if points:  # one forward pass yields every layer's output: all points cost one encoding
            emb, at_point = self.student.embed_points(ids, mask, points)
        else:
            emb, at_point = self.student(ids, mask), {}
        query, positive, negatives, scores = self._view(emb, queries, grouped, self.student.scores)
        size = len(batch["pair_id"])
        total = torch.zeros((), device=self.device)
        for name, objective in self.objectives.items():
            if objective.weight == 0:
                continue
            if name in self._points:
                # the DSE head reads full-width last-layer embeddings: points are scored by cosine
                views = [self._view(at_point[p], queries, grouped, _cosine) for p in self._points[name]]
                term = objective([self._arguments(objective.objective, name, batch, grouped, *v) for v in views])
            elif objective.inputs == "embeddings":
                term = objective(query, positive, negatives)
            elif objective.inputs == "embedding_targets":
                if "t_a" not in batch or grouped:
                    raise ValueError(f"objective {name!r} needs teacher embeddings: set data.init_args."
                                     f"teacher_embeddings (MultilingualDataModule), or set "
                                     f"model.init_args.objectives.{name}.init_args.weight=0")
                term = objective(torch.cat([query, positive]), torch.cat([batch["t_a"], batch["t_b"]]))
            else:
                if objective.inputs == "group_scores" and not grouped:
                    raise ValueError(f"objective {name!r} needs grouped data: use data.class_path "
                                     f"distill.data.GroupDataModule")
                targets = self._targets(batch, objective.target, name)
                term = sum(objective(s, targets) for s in scores.values())
            self.log(f"train/{name}", term, batch_size=size)
            total = total + objective.weight * term
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        return total

    def _arguments(self, objective: nn.Module, name: str, batch: dict[str, Any], grouped: bool, query: Tensor,
                   positive: Tensor, negatives: Tensor | None, scores: dict[str, Tensor]) -> tuple:
        """What `objective` is called with at one Matryoshka point: its embeddings, or its cosines and targets."""
        if objective.inputs == "embeddings":
            return query, positive, negatives
        if objective.inputs == "embedding_targets":
            return torch.cat([query, positive]), torch.cat([batch["t_a"], batch["t_b"]])
        if objective.inputs == "group_scores" and not grouped:
            raise ValueError(f"objective {name!r} needs grouped data: use data.class_path distill.data.GroupDataModule")
        return scores[COSINE], self._targets(batch, objective.target, name)

    @staticmethod
    def _targets(batch: dict[str, Any], target: str, name: str) -> Tensor:
        key = "score" if target == "teacher" else "gold"
        if key not in batch:
            fix = ("set data.init_args.cache_dir to a score cache (run `distill cache` first)" if key == "score"
                   else "the training data has no label column (data.init_args.label_column)")
            what = "teacher scores" if key == "score" else "gold labels"
            is_objective = name not in ("validation", "test")
            hint = f", or set model.init_args.objectives.{name}.init_args.weight=0" if is_objective else ""
            raise ValueError(f"{'objective ' if is_objective else ''}{name!r} needs {what}: {fix}{hint}")
        return batch[key]

    def _update(self, split: str, batch: dict[str, Any]) -> None:
        gold = self._targets(batch, "gold", "validation" if split == "val" else split)
        scores = self._update_points(split, batch, gold) if self._eval_points else self._encode_pair(batch)
        sets = self.set_metrics[split]
        if "eval_set" in batch and len(sets):
            names = batch["eval_set"]
            for name in dict.fromkeys(names):
                keep = torch.tensor([n == name for n in names], device=gold.device)
                sets[name].update({m: s[keep] for m, s in scores.items()}, gold[keep])
        else:
            (self.val_metrics if split == "val" else self.test_metrics).update(scores, gold)

    def _update_points(self, split: str, batch: dict[str, Any], gold: Tensor) -> dict[str, Tensor]:
        """Each Matryoshka point's metric updated; the full student's scores returned, from the same forward pass
        (no second encoding of the batch, and no memo: its texts are encoded once here anyway)."""
        ids = torch.cat([batch["a_input_ids"], batch["b_input_ids"]])
        mask = torch.cat([batch["a_attention_mask"], batch["b_attention_mask"]])
        full, at_point = self.student.embed_points(ids, mask, self._eval_points)
        for point, emb in at_point.items():
            u, v = emb.chunk(2)
            self.point_metrics[split][_point_key(point)].update(_cosine(u, v)[COSINE].float(), gold)
        return self.student.scores(*full.chunk(2))

    def _log_points(self, split: str) -> None:
        for key, metric in self.point_metrics[split].items():
            if metric.update_count:  # a split that saw no batch (a sanity check cut short) has nothing to log
                self.log(f"{split}/spearman_cosine/{key}", metric.compute())
            metric.reset()

    def _compute(self, split: str) -> dict[str, Tensor]:
        """Spearman per scoring mode; with named sets, logged per set and averaged over them (the mean is what
        checkpoints are selected on: every language counts the same, whatever its size)."""
        sets = self.set_metrics[split]
        if not len(sets):
            metrics = self.val_metrics if split == "val" else self.test_metrics
            values = metrics.compute()
            metrics.reset()
            return values
        self._memo.clear()
        # a set no batch reached on any rank (the sanity check's few batches, `limit_val_batches`) has nothing to
        # compute; one that some rank saw is computed on all of them (compute is collective under DDP)
        per_set = compute_sets(sets, lambda counts: self.trainer.strategy.reduce(counts, reduce_op="sum"))
        for name, values in per_set.items():
            self.log_dict({f"{split}/spearman_{m}/{name}": v for m, v in values.items()})
        for metric in sets.values():
            metric.reset()
        if not per_set:
            return {m: torch.tensor(float("nan"), device=self.device) for m in self.student.modes}
        return {m: torch.stack([v[m] for v in per_set.values()]).mean() for m in self.student.modes}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update("test", batch)

    def on_validation_epoch_end(self) -> None:
        values = self._compute("val")
        self.selected_mode = max(values, key=lambda m: values[m].item())
        self.log_dict({f"val/spearman_{m}": v for m, v in values.items()})
        self.log("val/spearman", values[self.selected_mode], prog_bar=True)
        self._log_points("val")

    def on_test_epoch_end(self) -> None:
        values = self._compute("test")
        self.log_dict({f"test/spearman_{m}": v for m, v in values.items()})
        self.log("test/spearman", values[self.selected_mode])
        self._log_points("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Student embeddings of single texts, with their ids."""
        emb = self.student(batch["a_input_ids"], batch["a_attention_mask"])
        return {"id": batch["pair_id"], "embedding": emb.float().cpu()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selected_mode"] = self.selected_mode

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.selected_mode = checkpoint.get("selected_mode", COSINE)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return adamw_with_warmup(self, hp.lr, hp.weight_decay, hp.warmup_ratio, {"student.head.": hp.head_lr})


def _point_key(point: tuple[int, int]) -> str:
    """A Matryoshka point's suffix in logged keys: `3x128` (layers x dims)."""
    return f"{point[0]}x{point[1]}"


def _cosine(u: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Scores at a Matryoshka point: cosine only (the DSE head takes full-width embeddings)."""
    return {COSINE: nn.functional.cosine_similarity(u, v, dim=-1)}


def _under_cli(module: pl.LightningModule) -> bool:
    # LightningCLI hands save_hyperparameters the class_path config, so load_from_checkpoint can rebuild
    # the student; a module built in Python keeps only the plain arguments (the weights are in the state dict):
    # there `student` and `objectives` are nn.Module instances, which save_hyperparameters would pickle into every
    # checkpoint (Lightning warns about exactly that: PR #12068), so they are ignored.
    # Lightning offers no public way to ask "am I being built by LightningCLI?": the CLI passes its config to
    # save_hyperparameters through this private ContextVar (added by Lightning-AI/pytorch-lightning PR #18105,
    # "load_from_checkpoint support for LightningCLI when using dependency injection"; the hparams it yields differ
    # from a Python-built module's, issue #20726). In 2.6.x the CLI sets it around the constructor
    # (pytorch_lightning/cli.py, `_InstantiatorFn.__call__`: `with _given_hyperparameters_context(...)`) and
    # save_hyperparameters reads it (core/mixins/hparams_mixin.py: `given_hparams = _given_hyperparameters.get()`).
    # If it moves, the import fails loudly; if it stops being set, `load_model` of a `distill fit` checkpoint (the
    # `student_ckpt` fixture of tests/conftest.py) finds no student config and refuses it.
    from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None
