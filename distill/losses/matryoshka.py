"""2D Matryoshka: one objective applied at several (layers, dims) points of the same student in one run."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from distill.losses.score_regression import check_weight

POINTS_KEY = "model.init_args.objectives.<name>.init_args.points"


def resolve_points(points: Sequence[Sequence[int | None]], depth: int, width: int,
                   key: str = POINTS_KEY) -> list[tuple[int, int]]:
    """(layers, dims) points with `None` read as "all layers" / "the full width", checked against a student.

    Args:
        points: [layers, dims] pairs as configured.
        depth: the student's number of encoder layers.
        width: the student's embedding width.
        key: the config key named in errors.

    Raises:
        ValueError: every point out of range, in one message naming the key and the valid ranges.
    """
    resolved, problems = [], []
    for i, point in enumerate(points):
        if len(point) != 2:
            problems.append(f"{key}[{i}] is {list(point)}; expected [layers, dims]")
            continue
        layers = depth if point[0] is None else point[0]
        dims = width if point[1] is None else point[1]
        if not 1 <= layers <= depth:
            problems.append(f"{key}[{i}] has layers {layers}, the student has {depth}: use 1..{depth} (or null)")
        if not 1 <= dims <= width:
            problems.append(f"{key}[{i}] has dims {dims}, larger than the embedding ({width})"
                            if dims > width else f"{key}[{i}] has dims {dims}: use 1..{width} (or null)")
        resolved.append((int(layers), int(dims)))
    if problems:
        raise ValueError("; ".join(problems))
    return resolved


class Matryoshka2D(nn.Module):
    """Any pair, group or embedding objective applied at a fixed list of (layers, dims) points, summed.

    At point (L, d) the student's embedding is the output of its L-th encoder layer, pooled as the student pools,
    cut to its first d dimensions and renormalised; the wrapped objective is computed on those embeddings exactly
    as on the full ones (pair and group scores by cosine: the DSE head reads full embeddings only). The term is
    `sum_p point_weights[p] * objective(point p)`, so one run trains a student that can be exported at any listed
    point (`distill export --layers L --dims d`). `null` in a point means all layers / the full width.

    Shapes: the module passes one tuple of the wrapped objective's arguments per point.
    Reference: Kusupati et al., 2022, "Matryoshka Representation Learning", arXiv:2205.13147; Li et al., 2024,
    "2D Matryoshka Sentence Embeddings", arXiv:2402.14776 (layers x dims).

    Args:
        objective: the wrapped objective (`distill.losses`); its own weight must stay 1.0: this wrapper's `weight`
            weighs the term. An `EmbeddingMSE` takes points of the full width only (the teacher's vectors have
            one width): each listed depth regressed onto the teacher's vector, as a layer-reduced student is.
        points: [layers, dims] pairs, e.g. `[[null, null], [null, 128], [3, 64]]`.
        point_weights: one multiplier per point (default: 1.0 each).
        weight: multiplier of this term in the total loss (>= 0; 0 switches it off).
    """

    def __init__(self, objective: nn.Module, points: list[tuple[int | None, int | None]],
                 point_weights: list[float] | None = None, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_weight(weight, "Matryoshka2D")
        problems = []
        inputs = getattr(objective, "inputs", None)
        if isinstance(objective, Matryoshka2D) or inputs not in ("pair_scores", "group_scores", "embeddings",
                                                                     "embedding_targets"):
            problems.append(f"objective is a {type(objective).__name__}; expected a pair, group or embedding "
                            f"objective of distill.losses (ScoreRegression, MarginMSE, ListwiseKL, InfoNCE, "
                            f"EmbeddingMSE)")
        elif getattr(objective, "weight", 1.0) != 1.0:
            problems.append(f"objective's own weight is {objective.weight}; leave "
                            f"init_args.objective.init_args.weight at 1.0 and set init_args.weight instead")
        if not points:
            problems.append("points is empty; name at least one [layers, dims] point")
        if point_weights is None:
            point_weights = [1.0] * len(points)
        if len(point_weights) != len(points):
            problems.append(f"point_weights has {len(point_weights)} values for {len(points)} points; give one each")
        if problems:
            raise ValueError("Matryoshka2D (model.init_args.objectives.<name>.init_args): " + "; ".join(problems))
        self.objective = objective
        self.points = [tuple(p) for p in points]
        self.point_weights = [check_weight(w, "Matryoshka2D point") for w in point_weights]

    @property
    def inputs(self) -> str:
        """What the wrapped objective consumes (`pair_scores`, `group_scores`, `embeddings` or
        `embedding_targets`)."""
        return self.objective.inputs

    @property
    def target(self) -> str | None:
        """The wrapped objective's target (`teacher`, `gold` or None)."""
        return getattr(self.objective, "target", None)

    def forward(self, per_point: Sequence[tuple[Tensor | None, ...]]) -> Tensor:
        """Weighted sum of the wrapped objective over the points, given its arguments at each point in order."""
        if len(per_point) != len(self.points):
            raise ValueError(f"Matryoshka2D got arguments for {len(per_point)} points; it has {len(self.points)}")
        return sum(w * self.objective(*args) for w, args in zip(self.point_weights, per_point))
