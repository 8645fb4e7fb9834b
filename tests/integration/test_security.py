"""Kafka over SASL_SSL, and personal data kept out of every output.

* A broker with a SASL_SSL listener (SCRAM-SHA-256 over TLS, certificates
  from a throw-away CA made by ``tests/support/tls.py``): the worker connects
  with credentials from its environment and works; with a wrong password or
  without trusting the CA it stops at once with a message naming the cause.
* The rules and feedback paths over SASL_SSL: ``txwatch rules publish`` and
  ``txwatch feedback`` reach the broker with the worker's credentials, and the
  worker's own rules and feedback followers read them (the new version judges
  the next event, the disposition is learnt).
* A run on personal data: every clear value of ``device_id``, ``ip``,
  ``phone`` and ``national_id`` sent (in good events, in malformed ones, in
  ones whose JSON does not even parse) is searched for in every topic the run
  wrote, the worker's log and its /metrics page. None may be there.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from detectors.registry import DEFAULT_CONFIG
from streams.events import PII_FIELDS
from streams.localkafka import LocalKafka, SecureListener, create_topics
from streams.simulate import generate, topic_for
from tests.support import faults
from tests.support.tls import TestPki, make_test_pki, sasl_ssl_client
from tests.support.worker import WorkerProcess, consume_until, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

USER = "txwatch-worker"
MECHANISM = "SCRAM-SHA-256"


class SecureBroker:
    def __init__(self, kafka: LocalKafka, pki: TestPki, password: str) -> None:
        self.kafka = kafka
        self.pki = pki
        self.password = password

    def client(self, password: str | None = None) -> dict[str, Any]:
        return sasl_ssl_client(self.pki, USER, password or self.password, MECHANISM)

    def worker_env(self, prefix: str, tmp_path: Path, **extra: str) -> dict[str, str]:
        secure = {
            "TXWATCH_SECURITY_PROTOCOL": "SASL_SSL", "TXWATCH_SASL_MECHANISM": MECHANISM,
            "TXWATCH_SASL_USERNAME": USER, "TXWATCH_SASL_PASSWORD": self.password,
            "TXWATCH_SSL_CAFILE": str(self.pki.ca_pem),
            "TXWATCH_DATA_DIR": str(tmp_path / "data"),
        }
        return worker_env(self.kafka.secure_bootstrap, prefix, **{**secure, **extra})


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """One broker with a SASL_SSL listener for this module (always a LocalKafka)."""
    directory = tmp_path_factory.mktemp("secure-kafka")
    pki = make_test_pki(directory / "pki")
    password = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
    kafka = LocalKafka(directory / "kafka",
                       secure_listener=pki.listener({USER: password}, MECHANISM))
    try:
        kafka.start()
        yield SecureBroker(kafka, pki, password)
    finally:
        kafka.close()


def test_secure_listener_writes_its_users_and_refuses_unsafe_ones(tmp_path: Path) -> None:
    """No broker: what the test tooling hands to Kafka for a SASL_SSL listener."""
    keystore = tmp_path / "broker.p12"
    scram = SecureListener(keystore, "store-pw", {"alice": "a-secret"}, "SCRAM-SHA-512")
    properties = scram.properties()
    assert properties["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["listener.name.sasl_ssl.ssl.keystore.location"] == str(keystore)
    assert scram.format_arguments() == ["--add-scram",
                                        "SCRAM-SHA-512=[name=alice,password=a-secret]"]
    plain = SecureListener(keystore, "store-pw", {"alice": "a-secret"}, "PLAIN")
    assert 'user_alice="a-secret"' in plain.properties()[
        "listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert plain.format_arguments() == []
    assert "a-secret" not in repr(scram)
    for users, mechanism in (({"bob": 'pass"word'}, "PLAIN"), ({"bob,x": "pw"}, "PLAIN"),
                             ({"bob": ""}, "PLAIN"), ({"bob": "pw"}, "GSSAPI")):
        with pytest.raises(ValueError):
            SecureListener(keystore, "store-pw", users, mechanism)


def run_worker_to_exit(env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env,
                            capture_output=True, timeout=timeout, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, output, time.monotonic() - started


async def test_worker_works_over_sasl_ssl_with_credentials_from_the_environment(
        secure_broker: SecureBroker, topic_prefix: str, tmp_path: Path) -> None:
    env = secure_broker.worker_env(topic_prefix, tmp_path)
    bootstrap = env["TXWATCH_BROKER"]
    client = secure_broker.client()
    await create_topics(bootstrap, [env["TXWATCH_PAYMENTS_TOPIC"], env["TXWATCH_LENDING_TOPIC"],
                                    env["TXWATCH_ALERT_TOPIC"], env["TXWATCH_DEAD_LETTER_TOPIC"]],
                        partitions=2, client=client)
    burst = [
        {"event_id": f"sec-{i}", "event_type": "payment", "account_id": "acct-sec",
         "occurred_at": f"2026-03-01T09:00:{2 * i:02d}Z", "amount": "20.00",
         "currency": "CNY", "counterparty_id": f"payee-{i}"}
        for i in range(12)
    ]
    settings = faults.worker_settings(env)
    messages = [faults.Message(settings.payments_topic, b"acct-sec", orjson.dumps(e))
                for e in burst]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await faults.publish(bootstrap, messages, security=client)
        await faults.wait_until_consumed(bootstrap, settings.app_id, settings.input_topics,
                                         timeout=120, security=client,
                                         alive=faults.alive(worker))
        alerts = await faults.read_topic(bootstrap, settings.alert_topic, security=client)
        assert worker.metric("txwatch_events_total", outcome="processed") == len(burst)
        log = worker.log_path.read_text(errors="replace")
    assert {orjson.loads(r.value)["detector"] for r in alerts} >= {"velocity"}
    assert secure_broker.password not in log


def txwatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_rules_and_feedback_are_published_and_followed_over_sasl_ssl(
        secure_broker: SecureBroker, topic_prefix: str, tmp_path: Path) -> None:
    env = secure_broker.worker_env(topic_prefix, tmp_path)
    bootstrap, client = env["TXWATCH_BROKER"], secure_broker.client()
    settings = faults.worker_settings(env)
    await create_topics(bootstrap, [*settings.input_topics, settings.alert_topic,
                                    settings.dead_letter_topic], partitions=2, client=client)
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["version"] = "sasl-2"
    config["detectors"]["velocity"]["params"]["limits"]["1m"].update(count=4, distinct_cp=4)
    config_file = tmp_path / "rules.json"
    config_file.write_bytes(orjson.dumps(config))
    # 6 payments in 15 s to one merchant: under the default limit of 10 a minute, over 4
    burst = [faults.Message(settings.payments_topic, b"acct-rules", orjson.dumps({
        "event_id": f"rules-{i}", "event_type": "payment", "account_id": "acct-rules",
        "occurred_at": f"2026-03-01T09:00:{3 * i:02d}Z", "amount": "20.00",
        "currency": "CNY", "counterparty_id": "merchant-1"})) for i in range(6)]

    def velocity(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["detector"] == "velocity"
                and r["account_id"] == "acct-rules"]

    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await asyncio.to_thread(wait_for, lambda: worker.metric(
            "txwatch_config_info", version=DEFAULT_CONFIG["version"]) == 1, 60,
            "the packaged version in force")
        published = await asyncio.to_thread(txwatch, env, "rules", "publish", str(config_file))
        assert published.returncode == 0, published.stderr
        await asyncio.to_thread(wait_for, lambda: worker.metric(
            "txwatch_config_info", version="sasl-2") == 1, 60,
            "the published version in force on the worker")
        shown = await asyncio.to_thread(txwatch, env, "rules", "show")
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["version"] == "sasl-2"

        await faults.publish(bootstrap, burst, security=client)
        records = await consume_until(bootstrap, settings.alert_topic,
                                      lambda rs: bool(velocity(rs)), security=client)
        [alert] = velocity(records)
        assert alert["config_version"] == "sasl-2"
        assert alert["event_ids"] == ["rules-3"]  # the 4th payment reaches the new limit

        disposed = await asyncio.to_thread(txwatch, env, "feedback", alert["alert_id"],
                                           "true_positive", "--analyst", "analyst-sasl")
        assert disposed.returncode == 0, disposed.stderr
        await asyncio.to_thread(wait_for, lambda: worker.metric(
            "txwatch_feedback_total", disposition="true_positive") == 1, 60,
            "the disposition learnt by the worker")
        log = worker.log_path.read_text(errors="replace")
    # the followers' warnings when a broker refuses them (streams/rules.py, streams/feedback.py)
    assert "rules: cannot read" not in log and "feedback: reading" not in log, log[-2000:]
    assert secure_broker.password not in log + published.stdout + disposed.stdout


def test_wrong_password_stops_the_worker_at_once_with_the_cause(
        secure_broker: SecureBroker, topic_prefix: str, tmp_path: Path) -> None:
    wrong = "not-" + secure_broker.password
    env = secure_broker.worker_env(topic_prefix, tmp_path, TXWATCH_SASL_PASSWORD=wrong)
    code, output, seconds = run_worker_to_exit(env, timeout=60)
    print(f"\nwrong password: exit {code} after {seconds:.1f} s: {output.strip()[-300:]}")
    assert code == 2
    assert seconds < 20
    assert f"refused the credentials of user '{USER}'" in output
    assert wrong not in output and secure_broker.password not in output


def test_an_untrusted_broker_certificate_stops_the_worker_with_the_cause(
        secure_broker: SecureBroker, topic_prefix: str, tmp_path: Path) -> None:
    env = secure_broker.worker_env(topic_prefix, tmp_path)
    del env["TXWATCH_SSL_CAFILE"]  # the system's CAs do not know the test CA
    code, output, seconds = run_worker_to_exit(env, timeout=60)
    print(f"\nuntrusted CA: exit {code} after {seconds:.1f} s: {output.strip()[-300:]}")
    assert code == 2
    assert seconds < 20
    assert "certificate" in output and "not trusted" in output


# -- personal data ----------------------------------------------------------------------------


def pseudonymous(field: str, value: str) -> str:
    """A clear value that cannot occur by chance in any output (unlike an 11-digit phone)."""
    return f"PII-{field}-{hashlib.sha256(value.encode()).hexdigest()[:12]}"


def personal_stream(events: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Simulated events whose personal fields carry unmistakable clear values."""
    out, clear = [], set()
    for event in generate(11, accounts=300, events=events):
        for name in PII_FIELDS:
            if isinstance(event.get(name), str):
                event[name] = pseudonymous(name, event[name])
                clear.add(event[name])
        out.append(event)
    return out, clear


def hostile_personal_messages(clear: set[str]) -> list[bytes]:
    """Malformed messages carrying personal values, one per way the decoder can reject."""
    base = {"event_id": "pii-bad", "event_type": "payment", "account_id": "acct-pii",
            "occurred_at": "2026-03-01T09:00:00Z", "amount": "10.00", "currency": "CNY"}
    values = {name: f"PII-{name}-hostile" for name in PII_FIELDS}
    clear.update(values.values())
    return [
        orjson.dumps({**base, **values, "amount": "-1"}),  # amount
        orjson.dumps({**base, **values, "occurred_at": "yesterday"}),  # timestamp
        orjson.dumps({**base, **values, "event_type": "teleport"}),  # unknown_type
        orjson.dumps({**base, **values, "currency": 7}),  # schema
        orjson.dumps({**base, "phone": 861390000, "device_id": ["PII-device_id-hostile"]}),
        orjson.dumps({**base, **values})[:-1] + b", oops}",  # not_json
        orjson.dumps({**base, **values}).replace(b"acct-pii", b"acct-\xff"),  # encoding
        orjson.dumps({**base, **values, "padding": "x" * 70_000}),  # oversized
        # not_object: a bare array has no field names, so nothing in it is known to be
        # personal (only top-level contract fields are; see docs/guarantees.md)
        orjson.dumps(["acct-pii", 10]),
    ]


async def all_topic_bytes(bootstrap: str, prefix: str) -> dict[str, list[bytes]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()
    out: dict[str, list[bytes]] = {}
    for topic in topics:
        records = await faults.read_topic(bootstrap, topic)
        out[topic] = [(r.key or b"") + b"\0" + (r.value or b"") for r in records]
    return out


async def test_personal_data_never_appears_in_clear_in_any_output(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    env = worker_env(kafka_bootstrap, topic_prefix, TXWATCH_PARTITIONS="2",
                     TXWATCH_DATA_DIR=str(tmp_path / "data"),
                     TXWATCH_PII_KEY=secrets.token_hex(16))
    settings = faults.worker_settings(env)
    await create_topics(kafka_bootstrap, [*settings.input_topics, settings.alert_topic,
                                          settings.dead_letter_topic], 2)
    events, clear = personal_stream(4000)
    bad = hostile_personal_messages(clear)
    messages = [faults.Message(topic_for(e["event_type"], settings),
                               e["account_id"].encode(), orjson.dumps(e)) for e in events]
    messages += [faults.Message(settings.payments_topic, b"acct-pii", raw, bad="pii")
                 for raw in bad]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await faults.publish(kafka_bootstrap, messages)
        await faults.wait_until_consumed(kafka_bootstrap, settings.app_id,
                                         settings.input_topics, timeout=180,
                                         alive=faults.alive(worker))
        await asyncio.to_thread(wait_for, lambda: worker.metric("txwatch_dead_letters_total")
                                == len(bad), 30, "the dead letters counted")
        assert worker.metrics_url is not None
        metrics_text = await asyncio.to_thread(_get, worker.metrics_url)
    outputs = await all_topic_bytes(kafka_bootstrap, topic_prefix)
    input_topics = set(settings.input_topics)
    letters = [orjson.loads(v.split(b"\0", 1)[1])
               for v in outputs.get(settings.dead_letter_topic, [])]
    outputs["dead-letter payloads (base64-decoded)"] = [
        base64.b64decode(letter["payload_b64"]) for letter in letters]
    outputs["worker log"] = [(tmp_path / "worker.log").read_bytes()]
    outputs["/metrics"] = [metrics_text]
    alerts = outputs.get(settings.alert_topic, [])
    print(f"\npersonal data: {len(clear)} clear values; scanned "
          + ", ".join(f"{name}: {len(blobs)}" for name, blobs in sorted(outputs.items())
                      if name not in input_topics))
    assert alerts, "the run raised no alert: nothing was checked there"
    assert len(letters) == len(bad)
    leaks = [(name, value) for name, blobs in outputs.items() if name not in input_topics
             for blob in blobs for value in clear if value.encode() in blob]
    assert not leaks, f"clear personal values found: {sorted(set(leaks))[:10]}"
    # the scan would have seen them: they are on the input topics
    sent = b"".join(b for t in input_topics for b in outputs.get(t, []))
    assert all(value.encode() in sent for value in clear)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body
