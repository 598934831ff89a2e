"""TLS on the serving port and the bearer token of the admin calls, over real gRPC on loopback."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import grpc
import pytest

from serving.client import FeedClient
from serving.config import ServingConfig
from serving.router import Router
from serving.server import create_server, stop_gracefully

TOKEN_ENV = "FEEDRANK_TEST_ADMIN_TOKEN"
TOKEN = "s3cret-admin-token"


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        try:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key_path),
                            "-out", str(cert_path), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           check=True, capture_output=True, timeout=30)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"no way to make a test certificate: cryptography is not installed and openssl failed ({exc})")
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture()
def tls_server(snapshot, make_state, tmp_path, monkeypatch):
    """(address, trusted cert PEM, untrusted cert PEM) of a TLS server whose admin calls need TOKEN."""
    cert, key = _self_signed(tmp_path / "server", "server")
    other, _ = _self_signed(tmp_path / "other", "other")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    config = ServingConfig(tls_cert_file=str(cert), tls_key_file=str(key), admin_token_env=TOKEN_ENV)
    router = Router(lambda: make_state(snapshot, "v1"))
    srv, port = create_server(config, router, address="127.0.0.1:0")
    yield f"127.0.0.1:{port}", cert.read_bytes(), other.read_bytes()
    stop_gracefully(srv, 1.0)


def test_over_tls_feeds_need_no_token_and_admin_calls_need_the_bearer_token(tls_server):
    address, ca, _ = tls_server
    with FeedClient(address, root_certificates=ca) as anonymous:
        assert len(anonymous.rank(12, k=5, candidate_count=50).items) == 5
        for call in (anonymous.status, anonymous.reload):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in err.value.details()
    with FeedClient(address, root_certificates=ca, admin_token="wrong-token") as wrong:
        with pytest.raises(grpc.RpcError) as err:
            wrong.status()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with FeedClient(address, root_certificates=ca, admin_token=TOKEN) as admin:
        assert admin.status().champion.ranker == "v1"
        assert admin.reload().champion.ranker == "v1"
        assert len(admin.rank(12, k=5, candidate_count=50).items) == 5


@pytest.mark.parametrize("client", ["plaintext", "untrusted-cert"])
def test_the_tls_port_refuses_plaintext_and_untrusted_servers(tls_server, client):
    address, _, other = tls_server
    opts = {} if client == "plaintext" else {"root_certificates": other}
    with FeedClient(address, admin_token=TOKEN, timeout=3.0, **opts) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.status()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_a_configured_token_admin_calls_are_open(snapshot, make_state, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    srv, port = create_server(ServingConfig(admin_token_env=TOKEN_ENV), Router(lambda: make_state(snapshot, "v1")),
                              address="127.0.0.1:0")
    try:
        with FeedClient(f"127.0.0.1:{port}") as c:
            assert c.status().champion.ranker == "v1"
    finally:
        stop_gracefully(srv, 1.0)
