"""Values scheduled over epochs: loss weights and params such as temperatures."""

import pytest
from pydantic import ValidationError

from kdframe.value_schedule import ValueSchedule, describe_value, value_at


def test_numbers_are_constants() -> None:
    assert value_at(0.9, 0, 10) == 0.9 and value_at(0.9, 9, 10) == 0.9


def test_linear_warm_up_as_in_dkd() -> None:
    warm_up = ValueSchedule(schedule="linear", start=0.0, end=1.0, epochs=20)
    assert [value_at(warm_up, e, 100) for e in (0, 10, 20, 50)] == [0.0, 0.5, 1.0, 1.0]


def test_linear_and_cosine_default_to_the_whole_stage() -> None:
    linear = ValueSchedule(schedule="linear", start=8.0, end=2.0)
    assert value_at(linear, 0, 5) == 8.0 and value_at(linear, 2, 5) == 5.0 and value_at(linear, 4, 5) == 2.0
    cosine = ValueSchedule(schedule="cosine", start=8.0, end=2.0)
    assert value_at(cosine, 0, 5) == pytest.approx(8.0)
    assert value_at(cosine, 2, 5) == pytest.approx(5.0)
    assert value_at(cosine, 4, 5) == pytest.approx(2.0)


def test_step_and_constant() -> None:
    step = ValueSchedule(schedule="step", start=4.0, milestones=[2, 4], gamma=0.5)
    assert [value_at(step, e, 6) for e in range(6)] == [4.0, 4.0, 2.0, 2.0, 1.0, 1.0]
    assert value_at(ValueSchedule(schedule="constant", start=3.0), 5, 6) == 3.0


def test_validation_and_description() -> None:
    with pytest.raises(ValidationError, match="needs 'end'"):
        ValueSchedule(schedule="linear", start=0.0)
    with pytest.raises(ValidationError):
        ValueSchedule(schedule="linear", start=0.0, end=1.0, extra=1)
    assert describe_value(0.5) == "0.5"
    assert describe_value(ValueSchedule(schedule="linear", start=0, end=1, epochs=20)) == "linear(0->1 over 20 epochs)"


def test_values_list_every_value_and_range_bounds_them() -> None:
    from kdframe.value_schedule import value_range

    step = ValueSchedule(schedule="step", start=2.0, milestones=[1, 3], gamma=-0.5)
    assert step.values() == [2.0, -1.0, 0.5] and value_range(step) == (-1.0, 2.0)
    assert value_range(ValueSchedule(schedule="cosine", start=8.0, end=2.0)) == (2.0, 8.0)
    assert value_range(0.3) == (0.3, 0.3)


def test_a_step_schedule_that_overflows_is_refused_not_a_crash() -> None:
    with pytest.raises(ValidationError, match="overflow"):
        ValueSchedule(schedule="step", start=1.0, milestones=[1, 2], gamma=1e300)
    with pytest.raises(ValidationError, match="must be a number"):
        ValueSchedule(schedule="constant", start=True)
