"""Ably's token revocation, by real ably-js and real ably-python, against our provider.

The example provider serves managed keys from a SQLite file. A client holding
the key gets tokens for two clientIds, revokes one clientId's tokens, and
then: that clientId's earlier tokens are refused with 40141, the other
clientId's still work, and a token issued after the revocation works.

- ably-js: ``rest.auth.revokeTokens([{type: 'clientId', value}])``, in its
  binary protocol (msgpack both ways, the Node default) and in JSON.
- ably-python 3.x has no ``revoke_tokens``; its generic ``rest.request()``
  (key auth, msgpack by default) posts Ably's request body to the same
  endpoint, which is what Ably documents for SDKs without the method.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask

from examples import provider_app
from flask_tokenreq.client import bearer
from tests.interop.conftest import run_client
from tests.servers import serve_app

SIGNING_SECRET = "interop-revoke-signing-secret-0123456789abcdef"


@dataclass
class Provider:
    url: str
    app: Flask

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def new_key(self, name: str) -> str:
        with self.app.app_context():
            _, full = self.app.extensions["tokenreq_provider"].keys.for_change().create(name)
        return str(full)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    tmp: Path = tmp_path_factory.mktemp("revoke-interop")
    app = provider_app.create_app(
        {
            "TOKENREQ_KEY_ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
            "TOKENREQ_DATABASE_URL": f"sqlite:///{tmp / 'keys.sqlite3'}",
            "TOKENREQ_NONCE_STORE": f"sqlite:///{tmp / 'nonces.sqlite3'}",
            "TOKENREQ_MESSAGES_DATABASE": f"sqlite:///{tmp / 'messages.sqlite3'}",
            "TOKENREQ_SIGNING_SECRET": SIGNING_SECRET,
            "SECRET_KEY": "interop-revoke-session-key-0123456789abcdef",
        },
        instance_path=str(tmp),
    )
    with serve_app(app) as url:
        yield Provider(url, app)
    app.extensions["tokenreq_provider"].close()


def code_for(provider: Provider, token: str, unique: str) -> int | None:
    """The Ably error code the provider answers a publish with ``token`` (``None``: accepted)."""
    response = requests.post(
        f"{provider.url}/channels/revoke-{unique}/messages",
        json={"name": "n", "data": "x"},
        headers={"Authorization": bearer(token)},
        timeout=10,
    )
    return None if response.ok else int(response.headers["X-Ably-ErrorCode"])


@pytest.mark.node
@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_ablyjs_revoke_tokens(node: str, provider: Provider, unique: str, binary: bool) -> None:
    key = provider.new_key(f"ably-js {unique}")
    out = run_client(
        node,
        {
            "scenario": "revokeTokens",
            "endpoint": "127.0.0.1",
            "port": provider.port,
            "key": key,
            "clientId": f"alice-{unique}",
            "otherClientId": f"bob-{unique}",
            "channel": f"revoke-{unique}",
            "options": {"useBinaryProtocol": binary},
        },
    )
    assert "failedStep" not in out, out
    assert out["useBinaryProtocol"] is binary
    assert out["revoked"]["clientId"] == f"alice-{unique}"
    assert out["publishBefore"] == {"ok": True}
    result = out["result"]
    assert result["successCount"] == 1
    assert result["failureCount"] == 0
    [entry] = result["results"]
    assert entry["target"] == f"clientId:alice-{unique}"
    assert entry["appliesAt"] == entry["issuedBefore"]
    assert entry["issuedBefore"] >= out["revoked"]["issued"]
    # The provider refused the revoked token with 40141; ably-js, holding only
    # that token and no way to renew it, reports 40171.
    assert out["publishRevoked"]["ok"] is False
    assert out["publishRevoked"]["error"]["code"] == 40171
    assert code_for(provider, out["revoked"]["token"], unique) == 40141
    assert out["publishOther"] == {"ok": True}
    # Issued right after the revocation (often in the same second): it works.
    assert out["fresh"]["issued"] >= entry["issuedBefore"]
    assert out["publishFresh"] == {"ok": True}
    assert code_for(provider, out["fresh"]["token"], unique) is None
    assert out["withToken"]["error"]["code"] == 40162


def self_signed(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the certificate file clients should trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def test_ably_python_revoke_tokens(
    provider: Provider, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ably-python refuses Basic auth over plain HTTP (40103), so this runs over TLS."""
    ably = pytest.importorskip("ably", reason="ably-python is not installed (test extra)")
    context, cert = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx (under ably-python) trusts it
    key = provider.new_key(f"ably-python {unique}")
    key_name = key.partition(":")[0]
    client_id = f"carol-{unique}"

    async def main(port: int) -> dict[str, Any]:
        def rest(**options: Any) -> Any:
            return ably.AblyRest(endpoint="127.0.0.1", tls_port=port, tls=True, **options)

        async def publish(details: Any) -> int | None:
            client = rest(token_details=details)
            try:
                await client.channels.get(f"py-revoke-{unique}").publish("n", "hello")
            except ably.AblyException as exc:
                return int(exc.code)
            finally:
                await client.close()
            return None

        with_key = rest(key=key)
        try:
            revoked = await with_key.auth.request_token(token_params={"client_id": client_id})
            other = await with_key.auth.request_token(token_params={"client_id": "dave"})
            before = await publish(revoked)
            answer = await with_key.request(
                "POST",
                f"/keys/{key_name}/revokeTokens",
                "3",
                body={"targets": [f"clientId:{client_id}"]},
            )
            fresh = await with_key.auth.request_token(token_params={"client_id": client_id})
            return {
                "before": before,
                "status": answer.status_code,
                "items": answer.items,
                "revoked": await publish(revoked),
                "revoked_token": revoked.token,
                "other": await publish(other),
                "fresh": await publish(fresh),
            }
        finally:
            await with_key.close()

    with serve_app(provider.app, ssl_context=context) as url:
        out = asyncio.run(main(int(url.rsplit(":", 1)[1])))
    assert out["before"] is None
    assert out["status"] == 200
    [result] = out["items"]
    assert result["successCount"] == 1
    assert result["results"][0]["target"] == f"clientId:{client_id}"
    # The provider refused the revoked token with 40141; ably-python, holding
    # only that token and no way to renew it, reports 40171 (as ably-js does).
    assert out["revoked"] == 40171
    assert code_for(provider, out["revoked_token"], unique) == 40141
    assert out["other"] is None
    assert out["fresh"] is None
