"""The README's event contract agrees with the schemas: its table and its examples."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from streams.codec import Decoder, load_schema
from streams.events import (
    ACCOUNT_TYPES,
    CROWDFUNDING_TYPES,
    EVENT_TYPES,
    LENDING_TYPES,
    PAYMENT_TYPES,
    DeadLetter,
    Event,
)

README = Path(__file__).resolve().parents[2] / "README.md"
ALWAYS = ("event_id", "event_type", "occurred_at", "account_id")
FAMILIES = {"payments": PAYMENT_TYPES, "lending": LENDING_TYPES,
            "crowdfunding": CROWDFUNDING_TYPES, "account": ACCOUNT_TYPES}


def contract_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Event contract"):text.index("## Guarantees")]


def examples() -> list[bytes]:
    return [block.strip().encode() for block in
            re.findall(r"```json\n(.*?)```", contract_section(), flags=re.DOTALL)]


def required_table() -> dict[str, tuple[str, set[str]]]:
    """event_type -> (family, fields the table says are required besides the four)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in contract_section().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] not in FAMILIES:
            continue
        family, types, required = cells
        names = set(re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", required)))
        for event_type in re.findall(r"`(\w+)`", types):
            rows[event_type] = (family, names)
    return rows


def test_the_table_lists_every_type_with_the_schema_required_fields() -> None:
    table = required_table()
    assert set(table) == set(EVENT_TYPES)
    for event_type, (family, fields) in table.items():
        assert event_type in FAMILIES[family], (event_type, family)
        required = set(load_schema(event_type)["required"]) - set(ALWAYS)
        assert fields == required, (event_type, fields, required)


@pytest.mark.parametrize("raw", examples(), ids=lambda raw: orjson.loads(raw)["event_type"])
def test_every_readme_example_is_accepted_by_the_worker_decoder(raw: bytes) -> None:
    outcome = Decoder(pii_key=b"dev", max_message_bytes=65536).decode(raw)
    assert not isinstance(outcome, DeadLetter), (outcome.reason, outcome.detail)
    assert isinstance(outcome, Event)


def test_there_is_one_example_per_family() -> None:
    types = [orjson.loads(raw)["event_type"] for raw in examples()]
    assert sorted(next(f for f, members in FAMILIES.items() if t in members)
                  for t in types) == sorted(FAMILIES)


def test_an_example_missing_a_required_field_is_rejected() -> None:
    """The check above can fail: the payment example without its currency is dead-lettered."""
    payment = next(orjson.loads(raw) for raw in examples()
                   if orjson.loads(raw)["event_type"] == "payment")
    del payment["currency"]
    outcome = Decoder(pii_key=b"dev", max_message_bytes=65536).decode(orjson.dumps(payment))
    assert isinstance(outcome, DeadLetter) and outcome.reason == "schema"
