"""A throw-away certificate authority and a broker certificate, made with ``keytool``.

``keytool`` ships with the JDK the local broker already needs, so no Python
crypto package and no ``openssl`` binary are required. The broker gets a
PKCS12 keystore; clients get the CA certificate as PEM for
:func:`ssl.create_default_context`. The broker certificate is valid for
``127.0.0.1`` and ``localhost`` (subject alternative names), so clients verify
the host name as they would in production.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.localkafka import SecureListener

VALIDITY_DAYS = 2


@dataclass(frozen=True)
class TestPki:
    """Files of a test CA and of the broker certificate it signed."""

    __test__ = False  # not a pytest test class despite the name

    ca_pem: Path
    broker_keystore: Path
    password: str

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA, host names checked."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def listener(self, users: dict[str, str], mechanism: str = "SCRAM-SHA-256") -> SecureListener:
        return SecureListener(self.broker_keystore, self.password, users, mechanism)


def _keytool(*args: str, stdin: bytes | None = None) -> bytes:
    keytool = shutil.which("keytool")
    if keytool is None:
        message = "keytool (from the JDK) is not on PATH; it makes the test certificates"
        raise RuntimeError(message)
    result = subprocess.run([keytool, *args], input=stdin, capture_output=True, check=False,
                            timeout=60)
    if result.returncode != 0:
        message = (f"keytool {args[0]} failed ({result.returncode}): "
                   f"{result.stderr.decode(errors='replace')}{result.stdout.decode(errors='replace')}")
        raise RuntimeError(message)
    return result.stdout


def make_test_pki(directory: Path) -> TestPki:
    """A CA, and a broker key and certificate signed by it, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    ca_store, broker_store = directory / "ca.p12", directory / "broker.p12"
    ca_pem, csr = directory / "ca.pem", directory / "broker.csr"
    broker_pem = directory / "broker.pem"
    common: list[str] = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    _keytool("-genkeypair", "-alias", "ca", "-dname", "CN=txwatch test CA", "-keyalg", "RSA",
             "-keysize", "2048", "-validity", str(VALIDITY_DAYS), "-ext", "bc:c=ca:true",
             "-ext", "ku:c=keyCertSign,cRLSign", "-keystore", str(ca_store), *common)
    _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store),
             "-storepass", password, "-file", str(ca_pem))
    _keytool("-genkeypair", "-alias", "broker", "-dname", "CN=127.0.0.1", "-keyalg", "RSA",
             "-keysize", "2048", "-validity", str(VALIDITY_DAYS), "-keystore", str(broker_store),
             *common)
    _keytool("-certreq", "-alias", "broker", "-keystore", str(broker_store),
             "-storepass", password, "-file", str(csr))
    _keytool("-gencert", "-alias", "ca", "-keystore", str(ca_store), "-storepass", password,
             "-infile", str(csr), "-outfile", str(broker_pem), "-rfc",
             "-validity", str(VALIDITY_DAYS), "-ext", "SAN=IP:127.0.0.1,DNS:localhost",
             "-ext", "ku:c=digitalSignature,keyEncipherment", "-ext", "eku=serverAuth")
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem),
             "-keystore", str(broker_store), "-storepass", password)
    _keytool("-importcert", "-noprompt", "-alias", "broker", "-file", str(broker_pem),
             "-keystore", str(broker_store), "-storepass", password)
    return TestPki(ca_pem, broker_store, password)


def sasl_ssl_client(pki: TestPki, username: str, password: str,
                    mechanism: str = "SCRAM-SHA-256") -> dict[str, Any]:
    """aiokafka keyword arguments for a SASL_SSL client."""
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
        "ssl_context": pki.client_context(),
    }
