"""Inbound keys: the headers that carry them, checked in constant time and always removed."""

from __future__ import annotations

import pytest

from engine.errors import HttpError
from engine.keys import BEARER, KeyHeader, authorize

TOY = KeyHeader("x-toy-key")
CARRIERS = (TOY, BEARER)
KEYS = [b"right-key"]


@pytest.mark.parametrize("headers", [{"x-toy-key": "right-key"}, {"authorization": "Bearer right-key"}, {"authorization": "bearer  right-key "}])
def test_the_right_key_in_any_carrier_passes_and_is_removed(headers: dict[str, str]) -> None:
    headers = {**headers, "accept": "*/*"}
    authorize(headers, KEYS, CARRIERS)
    assert headers == {"accept": "*/*"}


def test_every_carrier_is_removed_even_when_another_held_the_key() -> None:
    headers = {"x-toy-key": "right-key", "authorization": "Bearer something-else"}
    authorize(headers, KEYS, CARRIERS)
    assert headers == {}


def test_a_wrong_key_is_401_and_a_missing_one_says_where_to_send_it() -> None:
    with pytest.raises(HttpError) as wrong:
        authorize({"x-toy-key": "nope"}, KEYS, CARRIERS)
    assert (wrong.value.status, wrong.value.message) == (401, "invalid API key")
    with pytest.raises(HttpError) as missing:
        authorize({"authorization": "Basic abc"}, KEYS, CARRIERS)
    assert missing.value.status == 401
    assert missing.value.message == "missing API key: send it as x-toy-key or authorization: Bearer KEY"


def test_a_header_outside_the_carriers_is_no_key() -> None:
    """Only the configured carriers count: `x-toy-key` is just a header when not declared."""
    headers = {"x-toy-key": "right-key"}
    with pytest.raises(HttpError):
        authorize(headers, KEYS, (BEARER,))
    assert headers == {"x-toy-key": "right-key"}
