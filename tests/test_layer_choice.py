"""scripts/layer_choice.py's candidate sets: every single layer by default, given sets parsed, bad ones refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module():
    spec = importlib.util.spec_from_file_location("layer_choice", ROOT / "scripts" / "layer_choice.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_candidates_default_to_each_single_layer_and_parse_given_sets():
    choice = module()
    assert choice.candidates(4, None) == [[0], [1], [2], [3]]
    assert choice.candidates(12, ["7", "2,7"]) == [[7], [2, 7]]


@pytest.mark.parametrize("drop", [["12"], ["-1"], ["0,1,2,3"]])
def test_candidates_out_of_range_or_leaving_nothing_are_refused(drop):
    with pytest.raises(SystemExit, match="layers are 0..3 and at least one must stay"):
        module().candidates(4, drop)
