from __future__ import annotations

import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.inference.predictor import parse_label_map


def test_parse_label_map():
    assert parse_label_map("1:4,2:5", {}) == {1: 4, 2: 5}
    assert parse_label_map("checkpoint", {"label_mapping": {"1": 1, "2": 2}}) == {1: 1, 2: 2}
    assert parse_label_map(None, {}) is None
    with pytest.raises(RecipeError, match="CLASS:VALUE"):
        parse_label_map("1-4", {})
    with pytest.raises(RecipeError, match="stores no label_mapping"):
        parse_label_map("checkpoint", {})
