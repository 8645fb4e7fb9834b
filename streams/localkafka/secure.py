"""The broker's second client listener, SASL over TLS, as the security tests configure it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: SASL mechanisms a :class:`SecureListener` can offer.
SASL_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
#: Name of the TLS + SASL client listener in ``server.properties``.
SECURE_LISTENER: Final = "SASL_SSL"
#: Characters that would break the JAAS line or the ``--add-scram`` argument.
_UNSAFE_CREDENTIAL: Final = re.compile(r'[\s"\',=\[\]\\;]')


@dataclass(frozen=True)
class SecureListener:
    """A second client listener speaking SASL over TLS (``SASL_SSL``).

    The broker keeps its PLAINTEXT listener for itself (readiness probe,
    inter-broker traffic); clients under test connect to
    :attr:`~streams.localkafka.LocalKafka.secure_bootstrap` with a user below.

    Parameters
    ----------
    keystore
        PKCS12 file with the broker's private key and certificate chain
        (``tests/support/tls.py`` makes one with ``keytool``).
    keystore_password
        Its password (also the key's).
    users
        User name to password. SCRAM users are written into the storage when
        it is formatted (``kafka-storage format --add-scram``), so they are
        fixed for the life of the data directory; PLAIN users are read from
        ``server.properties`` at every start.
    mechanism
        One of :data:`SASL_MECHANISMS`.
    port
        Port on 127.0.0.1; the previous run's or any free one when ``None``.
    """

    keystore: Path
    keystore_password: str
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-256"
    port: int | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in SASL_MECHANISMS:
            message = f"SASL mechanism {self.mechanism!r}: expected one of {SASL_MECHANISMS}"
            raise ValueError(message)
        for name, password in self.users.items():
            if not name or not password or _UNSAFE_CREDENTIAL.search(name + password):
                message = (f"user {name!r}: names and passwords must be non-empty, without "
                           "quotes, commas, equals signs, brackets, backslashes or spaces")
                raise ValueError(message)

    def __repr__(self) -> str:  # never print the passwords
        return (f"SecureListener({self.mechanism}, users={sorted(self.users)}, "
                f"keystore={str(self.keystore)!r})")

    def properties(self) -> dict[str, str]:
        """The listener's entries in ``server.properties`` (ports excluded)."""
        prefix = f"listener.name.{SECURE_LISTENER.lower()}."
        mechanism = self.mechanism.lower()
        if self.mechanism == "PLAIN":
            users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
            jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
        else:
            jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            f"{prefix}ssl.keystore.type": "PKCS12",
            f"{prefix}ssl.keystore.location": str(self.keystore),
            f"{prefix}ssl.keystore.password": self.keystore_password,
            f"{prefix}ssl.key.password": self.keystore_password,
            f"{prefix}sasl.enabled.mechanisms": self.mechanism,
            f"{prefix}{mechanism}.sasl.jaas.config": jaas,
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM users."""
        if self.mechanism == "PLAIN":
            return []
        return [argument for name, password in self.users.items()
                for argument in ("--add-scram",
                                 f"{self.mechanism}=[name={name},password={password}]")]

