"""``txwatch import-csv``: a labelled CSV to contract events and a labels file."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.codec import Decoder
from streams.events import DeadLetter, Event

CSV = """ts,src,dst,amount,type,label,pattern,group
0,acc-1,acc-2,1200.50,TRANSFER,0,,
60,acc-2,shop-9,0.5,PAYMENT,0,,
3600,acc-2,cash-1,1199.999999990000,CASH_OUT,1,ato,
3600,acc-3,acc-3,75,CASH_IN,1,ato,
86400,acc-4,shop-7,12.00,grocery_pos,1,burst,g-17
"""


def decode_all(path: Path) -> list[Event]:
    decoder = Decoder(pii_key=b"test", max_message_bytes=65536)
    events = []
    for line in path.read_bytes().splitlines():
        decoded = decoder.decode(line)
        assert not isinstance(decoded, DeadLetter), decoded
        events.append(decoded)
    return events


def write(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def run(*argv: object) -> int:
    return main(["import-csv", *(str(a) for a in argv)])


@pytest.mark.parametrize("name", ["in.csv", "in.csv.gz"])
def test_rows_become_valid_events_with_exact_amounts_and_a_labels_file(
        tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, CSV.replace("1199.999999990000", "1199.990000"), name)
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.csv"
    assert run(source, "--out", out, "--labels-out", labels, "--currency", "EUR",
               "--start", "2024-05-01T00:00:00+02:00", "--id-prefix", "x-") == 0

    events = decode_all(out)
    assert [e.event_id for e in events] == ["x-0", "x-1", "x-2", "x-3", "x-4"]
    assert [e.event_type for e in events] == [
        "transfer", "payment", "withdrawal", "top_up", "payment"]
    assert [e.amount_minor for e in events] == [120050, 50, 119999, 7500, 1200]
    assert {e.currency for e in events} == {"EUR"}
    assert events[0].occurred_at.isoformat() == "2024-04-30T22:00:00+00:00"
    assert events[4].occurred_at.isoformat() == "2024-05-01T22:00:00+00:00"
    assert (events[0].account_id, events[0].counterparty_id) == ("acc-1", "acc-2")
    # an unknown source type is a payment to the merchant dst
    assert (events[4].merchant_id, events[1].merchant_id) == ("shop-7", "shop-9")
    assert events[2].merchant_id is None

    raw = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["amount"] for r in raw] == ["1200.50", "0.50", "1199.99", "75.00", "12.00"]
    assert not any("label" in r or "pattern" in r or "group" in r for r in raw)

    with labels.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["event_id", "label", "pattern", "group"],
                    ["x-2", "1", "ato", "ato:acc-2"], ["x-3", "1", "ato", "ato:acc-3"],
                    ["x-4", "1", "burst", "g-17"]]
    summary = capsys.readouterr().out
    assert "5 rows -> 5 events" in summary and "currency EUR" in summary
    assert "imported as payment with merchant_id = dst (1): grocery_pos 1" in summary
    assert "ato 2 in 2 groups" in summary


def test_the_output_is_the_same_on_every_run(tmp_path: Path) -> None:
    source = write(tmp_path, CSV.replace("1199.999999990000", "1199.99"))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run(source, "--out", first, "--labels-out", tmp_path / "a.csv") == 0
    assert run(source, "--out", second, "--labels-out", tmp_path / "b.csv") == 0
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert b'"currency":"USD"' in first.read_bytes()  # the documented default


def test_a_type_map_overrides_the_defaults(tmp_path: Path) -> None:
    source = write(tmp_path, CSV.replace("1199.999999990000", "1199.99"))
    out = tmp_path / "events.jsonl"
    assert run(source, "--out", out, "--type-map", "grocery_pos=withdrawal,CASH_OUT=transfer",
               "--type-map", "CASH_IN=refund") == 0
    assert [e.event_type for e in decode_all(out)] == [
        "transfer", "payment", "transfer", "refund", "withdrawal"]
    assert run(source, "--out", out, "--type-map", "grocery_pos=loan_status") == 2
    assert run(source, "--out", out, "--type-map", "grocery_pos") == 2


def test_a_bad_row_stops_the_import_with_its_line_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, CSV)  # line 4 has more than two decimal places
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.csv"
    assert run(source, "--out", out, "--labels-out", labels) == 2
    err = capsys.readouterr().err
    assert "line 4: amount '1199.999999990000' has more than 2 decimal places" in err
    assert not out.exists() and not labels.exists()
    assert not list(tmp_path.glob(".*partial"))


def test_allow_bad_skips_and_lists_bad_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = CSV + "7200,acc-5,acc-6,-3.00,TRANSFER,0,,\nabc,acc-5,acc-6,3,TRANSFER,0,,\n" \
        "7200,acc-5,,3,TRANSFER,0,,\n7200,acc-5,acc-6,3\n7200,acc-5,acc-6,3,PAYMENT,maybe,,\n"
    source = write(tmp_path, text)
    out = tmp_path / "events.jsonl"
    assert run(source, "--out", out, "--allow-bad") == 0
    assert [e.event_id for e in decode_all(out)] == ["e0", "e1", "e3", "e4"]
    summary = capsys.readouterr().out
    assert "skipped 6 bad rows" in summary
    for expected in ("line 4: amount '1199.999999990000' has more than 2 decimal places",
                     "line 7: amount '-3.00' is not a plain non-negative decimal",
                     "line 8: ts 'abc' is not a non-negative integer",
                     "line 9: type TRANSFER is a transfer, which needs a dst",
                     "line 10: has 4 fields, the header 8"):
        assert expected in summary
    assert "line 11" not in summary  # only the first five are listed


def test_a_missing_column_or_file_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path, "ts,src,amount,type\n0,a,1,TRANSFER\n")
    assert run(source, "--out", tmp_path / "e.jsonl") == 2
    assert "lacks the column(s) dst" in capsys.readouterr().err
    assert run(tmp_path / "nope.csv", "--out", tmp_path / "e.jsonl") == 2
    source = write(tmp_path, CSV)
    assert run(source, "--out", tmp_path / "e.jsonl", "--currency", "usd") == 2
    assert run(source, "--out", tmp_path / "e.jsonl", "--start", "2024-01-01T00:00:00") == 2
