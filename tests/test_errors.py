"""The suggestion helper used by error messages."""

from kdframe.errors import suggest


def test_suggest_close_match_and_none() -> None:
    assert "'hinton_kd'" in suggest("hinton_dk", ["hinton_kd", "fitnet"])
    assert suggest("zzz", ["hinton_kd", "fitnet"]) == ""
