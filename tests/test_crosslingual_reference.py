"""scripts/crosslingual_reference.py: per-set Spearman from any encoder, and issue 16's ratios from those sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scripts_loader import load_script


def module():
    return load_script("crosslingual_reference")


def _angle_encoder(angles: dict[str, float]):
    """Each text a vector at its angle (degrees): the cosine of a pair falls as the angles part."""
    def encode(texts: list[str]) -> np.ndarray:
        # lengths that grow with the angle reorder the raw dot products: only cosines give the expected ranks
        return np.array([[(1 + angles[t]) * math.cos(math.radians(angles[t])),
                          (1 + angles[t]) * math.sin(math.radians(angles[t]))] for t in texts])
    return encode


def test_sts_sets_rank_cosines_against_labels_per_set():
    angles = {"q": 0, "a": 10, "b": 30, "c": 50, "d": 70}
    ordered = [("q", t, label) for t, label in [("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0)]]
    # one adjacent swap among 4 pairs: rho = 1 - 6 * (1 + 1) / (4 * 15) = 0.8
    swapped = [("q", t, label) for t, label in [("a", 4.0), ("b", 2.0), ("c", 3.0), ("d", 1.0)]]
    rows = [{"text_a": a, "text_b": b, "label": label, "eval_set": name}
            for name, pairs in [("en", ordered), ("de-en", swapped)] for a, b, label in pairs]
    assert module().sts_sets(_angle_encoder(angles), rows) == {"en": 1.0, "de-en": 0.8}


def test_ratios_divide_by_english_and_need_every_cross_set():
    ref = module()
    sts = {"en": 0.8, "de-en": 0.76, "zh-en": 0.68, **{c: 0.72 for c in ref.CROSS if c not in ("de-en", "zh-en")},
           **{x: 0.6 for x in ("de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")}}
    out = ref.ratios(sts)
    assert out["de-en / en"] == 0.95 and out["zh-en / en"] == 0.85
    assert out["mean xx-en / en"] == pytest.approx((0.76 + 0.68 + 8 * 0.72) / 10 / 0.8, abs=1e-4)
    assert out["mean xx / en"] == 0.75
    del sts["ru-en"]
    assert ref.ratios(sts)["mean xx-en / en"] is None  # a mean over 9 sets is not the target's mean over 10


def test_an_unknown_encoder_is_refused_in_one_line():
    with pytest.raises(SystemExit, match=r"^no-such-model: not use-m, e5 or a sentence-transformers folder; export"):
        module().encoder("no-such-model", 1)
