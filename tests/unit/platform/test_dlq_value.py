"""reftrain.streams.dlq_value: what a dead-letter copy keeps when the original is too big to copy.

Synthetic byte strings: the property under test is about sizes, not market data."""

from __future__ import annotations

import hashlib
import os

from reftrain.streams import MAX_MESSAGE_BYTES, dlq_value

HEADERS = [("error.class", b"DecodeError"), ("source.offset", b"12345"), ("service", b"pivots")]


def test_a_value_that_fits_is_copied_whole_without_truncation_headers() -> None:
    value = os.urandom(900_000)
    copy, extra = dlq_value(b"BTCUSDT:1m", value, HEADERS)
    assert copy is value
    assert extra == []


def test_a_null_value_stays_null() -> None:
    assert dlq_value(b"k", None, HEADERS) == (None, [])


def test_a_value_over_the_limit_is_cut_to_a_prefix_that_fits_and_says_so() -> None:
    value = os.urandom(1_040_000)
    key = b"BTCUSDT:1m"
    copy, extra = dlq_value(key, value, HEADERS)
    assert copy is not None and value.startswith(copy) and len(copy) < len(value)
    headers = dict(extra)
    assert headers == {
        "dlq.truncated": b"true",
        "dlq.original-size": b"1040000",
        "dlq.original-sha256": hashlib.sha256(value).hexdigest().encode(),
    }
    total = len(key) + len(copy) + sum(len(k) + len(v) for k, v in HEADERS + extra)
    assert total < MAX_MESSAGE_BYTES
    assert len(copy) > MAX_MESSAGE_BYTES - 20_000, "keeps as much as the limit allows, less framing"


def test_big_headers_leave_less_room_for_the_value() -> None:
    value = os.urandom(MAX_MESSAGE_BYTES)
    small, _ = dlq_value(b"k", value, HEADERS)
    large, _ = dlq_value(b"k", value, [*HEADERS, ("trace", b"x" * 100000)])
    assert small is not None and large is not None
    assert len(small) - len(large) == 100_000 + len("trace")
