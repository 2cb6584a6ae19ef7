"""A node serves ``wss://`` with ``--tls-cert``/``--tls-key`` (spec §1.1)."""

import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from swarmnode.launcher import start_node
from swarmnode.protocol import Info, InfoReply, decode, encode


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "node.crt", tmp_path / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_node(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=[
            "--backend",
            "torch",
            "--no-measure",
            "--relay",
            "never",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        log_path=tmp / "node.log",
    )
    node.cert = cert
    yield node
    node.process.kill()
    node.process.wait()


def test_a_node_with_a_certificate_serves_wss(tls_node):
    assert tls_node.url.startswith("wss://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(tls_node.cert))
    with connect(tls_node.url, ssl=context, compression=None) as ws:
        ws.send(encode(Info(id=3)))
        reply = decode(ws.recv(timeout=30))
    assert isinstance(reply, InfoReply) and reply.id == 3


def test_it_serves_no_plaintext_websocket_and_a_client_checks_the_certificate(tls_node):
    plain = tls_node.url.replace("wss://", "ws://")
    with pytest.raises(Exception):  # noqa: B017 - the handshake fails in one of several ways, none of them a reply
        with connect(plain, compression=None, open_timeout=10) as ws:
            ws.send(encode(Info(id=1)))
            ws.recv(timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the certificate
        connect(tls_node.url, ssl=ssl.create_default_context(), compression=None, open_timeout=10)


def test_serve_wants_both_tls_files(tiny_models, tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "swarmnode", "serve", "--model", str(tiny_models["llama"]), "--tls-cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--tls-key" in out.stderr
