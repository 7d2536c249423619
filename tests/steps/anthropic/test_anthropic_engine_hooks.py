"""What the Anthropic steps declare to the engine: their key header and the shape of keys."""

from __future__ import annotations

import steps.anthropic  # noqa: F401  (importing the package declares them)
from engine import keys, logs


def test_x_api_key_carries_inbound_keys_before_bearer() -> None:
    names = [h.name for h in keys.key_headers()]
    assert names.index("x-api-key") < names.index("authorization")


def test_keys_of_the_sk_family_are_scrubbed_and_the_header_is_a_secret_name() -> None:
    assert logs.scrub("ant sk-ant-api03-abcdef, or sk-or-v1-123456") == "ant [REDACTED], or [REDACTED]"
    assert logs.is_secret_name("X-Api-Key")
