"""scripts/layer_choice.py's candidate sets: every single layer by default, given sets parsed, bad ones refused."""

from __future__ import annotations

import pytest
from scripts_loader import load_script


def module():
    return load_script("layer_choice")


def test_candidates_default_to_each_single_layer_and_parse_given_sets():
    choice = module()
    assert choice.candidates(4, None) == [[0], [1], [2], [3]]
    assert choice.candidates(12, ["7", "2,7"]) == [[7], [2, 7]]


@pytest.mark.parametrize("drop", [["12"], ["-1"], ["0,1,2,3"]])
def test_candidates_out_of_range_or_leaving_nothing_are_refused(drop):
    with pytest.raises(SystemExit, match="layers are 0..3 and at least one must stay"):
        module().candidates(4, drop)
