"""Every Kafka client txwatch uses, built from :class:`Settings`, and topic creation.

Producers, consumers and admin clients are constructed here and nowhere
else (``tests/unit/test_clients.py`` walks the code to keep it so), so the
security settings (``TXWATCH_SECURITY_PROTOCOL``, SASL, CA file) reach every
connection: the worker's side tasks and the ``rules``, ``feedback``,
``tail`` and ``simulate`` commands alike.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
    for_code,
)

from streams.settings import Settings

#: Most replicas a topic gets when the caller does not say (fewer brokers: one per broker).
MAX_DEFAULT_REPLICATION = 3


def min_insync_for(replication_factor: int) -> int:
    """``min.insync.replicas`` for a topic with that many replicas: all but one, at least 1.

    A write is then acknowledged by two replicas of three, and the topic
    stays writable while one broker is down.

    >>> [min_insync_for(n) for n in (1, 2, 3, 5)]
    [1, 1, 2, 4]
    """
    return max(1, replication_factor - 1)


def replica_configs(replication_factor: int) -> dict[str, str]:
    """The topic configuration every topic txwatch creates carries."""
    return {"min.insync.replicas": str(min_insync_for(replication_factor))}


async def resolve_replication_factor(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with ``replication_factor`` decided: as set, else the brokers, at most 3.

    The worker calls it once at start, so that the topics it creates and those
    Faust creates (changelogs) get the same number of replicas.
    """
    if settings.replication_factor > 0:
        return settings
    client = admin(settings, **overrides)
    try:
        await client.start()
        replicas = await _default_replicas(client)
    except KafkaError as exc:
        message = f"cannot ask the cluster at {settings.broker} how many brokers it has: {exc!r}"
        raise KafkaSetupError(message) from exc
    finally:
        await client.close()
    return replace(settings, replication_factor=replicas)


async def _default_replicas(client: AIOKafkaAdminClient) -> int:
    """One replica per broker of the cluster, at most :data:`MAX_DEFAULT_REPLICATION`."""
    cluster = await client.describe_cluster()
    brokers = len(cluster.get("brokers") or ())
    return max(1, min(MAX_DEFAULT_REPLICATION, brokers))


class KafkaSetupError(RuntimeError):
    """Topics cannot be created, or their partitions have no leader in time."""


class KafkaAccessError(KafkaSetupError):
    """A client cannot use the cluster: unreachable, TLS refused, or credentials refused."""


def options(settings: Settings, client_id: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """aiokafka keywords: the bootstrap servers and security from ``settings``; overrides win.

    Parameters
    ----------
    settings
        Bootstrap servers and security settings.
    client_id
        Default client id (shows in the broker's logs and quotas).
    overrides
        Any aiokafka keyword; a test tooling caller may pass its own
        ``bootstrap_servers`` or security keywords here.
    """
    return {"bootstrap_servers": settings.broker, "client_id": client_id,
            **settings.kafka_client(), **overrides}


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer (not started) acknowledged by all in-sync replicas unless overridden."""
    return AIOKafkaProducer(**options(settings, f"{settings.app_id}-producer",
                                      {"acks": "all", **overrides}))


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer (not started) of ``topics``; without a group and auto-commit by default."""
    defaults = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    return AIOKafkaConsumer(*topics, **options(settings, f"{settings.app_id}-consumer",
                                               {**defaults, **overrides}))


def admin(settings: Settings, **overrides: Any) -> AIOKafkaAdminClient:
    """An admin client (not started)."""
    return AIOKafkaAdminClient(**options(settings, f"{settings.app_id}-admin", overrides))


async def create_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int | None = None,
    *,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    configs: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    **overrides: Any,
) -> list[str]:
    """Create the missing topics, wait until every partition has a leader; return those created.

    The one place txwatch creates topics. Idempotent: a topic that exists
    (or that someone else creates meanwhile) is left as it is.

    Parameters
    ----------
    settings
        The cluster and its security settings.
    names
        Topic names.
    partitions
        Partitions of each new topic; ``settings.partitions`` when ``None``.
    replication_factor
        Replicas of each new topic; when ``None``, ``settings.replication_factor``,
        and when that is 0, the number of brokers, at most
        :data:`MAX_DEFAULT_REPLICATION`.
    min_insync_replicas
        ``min.insync.replicas`` of each new topic; one less than the replicas
        (at least 1) when ``None`` (:func:`min_insync_for`).
    configs
        Further topic configuration (``cleanup.policy`` ...).
    timeout
        Seconds for the whole operation.
    overrides
        aiokafka keywords for the admin client (see :func:`options`).

    Raises
    ------
    KafkaSetupError
        The broker refuses a topic, or the partitions have no leader in time.
    """
    topics = list(dict.fromkeys(names))
    if not topics:
        return []
    count = settings.partitions if partitions is None else partitions
    deadline = time.monotonic() + timeout
    client = admin(settings, request_timeout_ms=int(timeout * 1000), **overrides)
    bootstrap = overrides.get("bootstrap_servers", settings.broker)
    try:
        await client.start()
        if replication_factor is None and settings.replication_factor > 0:
            replication_factor = settings.replication_factor
        if replication_factor is None:
            replication_factor = await _default_replicas(client)
        if min_insync_replicas is None:
            min_insync_replicas = min_insync_for(replication_factor)
        topic_configs = {"min.insync.replicas": str(min_insync_replicas), **(configs or {})}
        existing = set(await client.list_topics())
        missing = [name for name in topics if name not in existing]
        created: list[str] = []
        if missing:
            response = await client.create_topics(
                [NewTopic(name, count, replication_factor, topic_configs=topic_configs)
                 for name in missing],
                timeout_ms=int(timeout * 1000),
            )
            refused = []
            for topic, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != TopicAlreadyExistsError.errno:
                    detail = rest[0] if rest and rest[0] else for_code(code).__name__
                    refused.append(f"{topic}: {detail}")
            if refused:
                message = f"the broker at {bootstrap} refused to create " + "; ".join(refused)
                raise KafkaSetupError(message)
        while True:
            described = await client.describe_topics(topics)
            if all(_has_leaders(entry) for entry in described):
                return created
            if time.monotonic() >= deadline:
                message = f"topics {topics} have partitions without a leader after {timeout} s"
                raise KafkaSetupError(message)
            # Metadata propagates asynchronously; the admin client has no wait call.
            await asyncio.sleep(0.05)
    finally:
        await client.close()


def _has_leaders(topic: Mapping[str, object]) -> bool:
    partitions = topic.get("partitions")
    if topic.get("error_code") != 0 or not isinstance(partitions, list) or not partitions:
        return False
    return all(partition.get("leader", -1) >= 0 for partition in partitions)


async def check_access(settings: Settings, *, timeout: float = 10.0) -> None:
    """Connect to the bootstrap servers once, as the real clients will, or say precisely why not.

    aiokafka's clients log a refused login and then report only that they
    could not bootstrap, and Faust retries that for ever; a worker calls this
    first so that wrong credentials or an untrusted certificate stop it at
    once with a message naming the cause.

    Parameters
    ----------
    settings
        The bootstrap servers and security settings.
    timeout
        Seconds allowed for each server's connection, TLS handshake and login.

    Raises
    ------
    KafkaAccessError
        The credentials or the SASL mechanism are refused, the server's
        certificate is not trusted, or no server answers; the message says
        which and never contains the password.
    """
    security = settings.kafka_client()
    protocol = settings.security_protocol
    user, mechanism = settings.sasl_username, settings.sasl_mechanism
    unreachable = []
    for server in (part.strip() for part in settings.broker.split(",") if part.strip()):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), client_id="txwatch-access-check",
                            request_timeout_ms=int(timeout * 1000), **security),
                timeout,
            )
        except SaslAuthenticationFailed as exc:
            message = (f"Kafka at {server} refused the credentials of user {user!r} "
                       f"({mechanism} over {protocol}): {exc}")
            raise KafkaAccessError(message) from None
        except UnsupportedSaslMechanismError as exc:
            message = f"Kafka at {server} does not offer SASL mechanism {mechanism}: {exc}"
            raise KafkaAccessError(message) from None
        except ssl.SSLCertVerificationError as exc:
            message = (f"the TLS certificate of Kafka at {server} is not trusted: "
                       f"{exc.verify_message}")
            raise KafkaAccessError(message) from None
        except ssl.SSLError as exc:
            message = (f"TLS handshake with Kafka at {server} failed ({exc.reason}); "
                       f"is {server} a {protocol} listener?")
            raise KafkaAccessError(message) from None
        except (OSError, TimeoutError, KafkaError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            if protocol.startswith("SASL") and isinstance(exc, TimeoutError):
                reason += f" (a login as {user!r} with {mechanism} did not complete)"
            unreachable.append(f"{server}: {reason}")
            continue
        conn.close()
        return
    message = f"cannot reach Kafka over {protocol}: " + "; ".join(unreachable or [settings.broker])
    raise KafkaAccessError(message)
