"""Spec helpers: cell ids and round trips, parameter resolution, range checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.errors import UsageError
from harness.specs import Budget, Cell, check_ranges, format_params, resolve_params


@dataclass(frozen=True)
class Params:
    steps: int = 1
    test_steps: int = 0
    lr: float = 0.1
    sizes: tuple[int, ...] = (40, 40)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("steps",), non_negative=("test_steps",), positive=("lr",))


def test_cell_id_is_readable_and_round_trips():
    cell = Cell("maml", (("inner_lr", 0.4), ("steps", 1)), "sinusoid", (("shots", 10),), "cpu", 2, Budget(iterations=5))
    assert cell.id == "maml[inner_lr=0.4,steps=1]/sinusoid[shots=10]/cpu/seed=2"
    assert Cell.from_dict(cell.to_dict()) == cell
    assert format_params({}) == "" and format_params({"b": [1, 2], "a": 0.5}) == "[a=0.5,b=(1,2)]"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", 0, "steps must be >= 1, got 0"),
    ("test_steps", -1, "test_steps must be >= 0, got -1"),
    ("lr", 0.0, "lr must be > 0, got 0.0"),
])
def test_check_ranges_names_the_field_and_the_range(field, value, message):
    with pytest.raises(UsageError, match=message):
        resolve_params(Params, {field: value}, "test")


def test_resolve_params_coerces_ints_to_floats_and_lists_to_tuples():
    params = resolve_params(Params, {"lr": 1, "sizes": [8, 8]}, "test")
    assert params.lr == 1.0 and isinstance(params.lr, float) and params.sizes == (8, 8)
    with pytest.raises(UsageError, match="parameter 'lr' got 'fast', expected float"):
        resolve_params(Params, {"lr": "fast"}, "test")
