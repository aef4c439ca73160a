"""The study CA and the SuperLink certificate made without openssl: verified by cryptography's
X.509 verifier and in a real TLS handshake over loopback; key files 0600; nothing overwritten;
`securefed keys tls`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from typer.testing import CliRunner

from securefed.cli import keys as keys_cli
from securefed.crypto.study_ca import (
    TlsFiles,
    certificate_sha256,
    issue_server_cert,
    make_study_tls,
)
from securefed.crypto.tls import check_ca_certificate
from securefed.errors import ConfigError

HOSTS = ["127.0.0.1", "localhost", "fl.coordinator.example.org", "::1"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_study_tls(tmp_path_factory.mktemp("tls") / "tls", HOSTS)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_server_certificate_verifies_against_the_ca(tls: TlsFiles) -> None:
    ca, server = _cert(tls.ca_cert), _cert(tls.server_cert)
    assert [p.name for p in sorted(tls.ca_cert.parent.iterdir())] == [
        "ca.key", "ca.pem", "server.key", "server.pem",
    ]  # fmt: skip
    verifier = PolicyBuilder().store(Store([ca]))
    for subject in (
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
        x509.DNSName("fl.coordinator.example.org"),
    ):
        chain = verifier.build_server_verifier(subject).verify(server, [])
        assert chain == [server, ca]
    with pytest.raises(VerificationError):
        verifier.build_server_verifier(x509.DNSName("other.example.org")).verify(server, [])
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
    ]  # fmt: skip
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.coordinator.example.org"]
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "127.0.0.1"
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    # valid from an hour ago (clock skew), for the default 730 days
    now = dt.datetime.now(dt.UTC)
    assert (
        now - dt.timedelta(minutes=61) <= ca.not_valid_before_utc <= now - dt.timedelta(minutes=59)
    )
    assert ca.not_valid_after_utc - now > dt.timedelta(days=729)
    assert check_ca_certificate(tls.ca_cert) == 1
    assert certificate_sha256(tls.ca_cert) == ca.fingerprint(hashes.SHA256()).hex(":").upper()


def test_key_files_are_0600_and_certificates_0644(tls: TlsFiles) -> None:
    for key in (tls.ca_key, tls.server_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # no passphrase
    for cert in (tls.ca_cert, tls.server_cert):
        assert stat.S_IMODE(os.stat(cert).st_mode) == 0o644


def test_a_second_call_refuses_and_changes_nothing(tls: TlsFiles) -> None:
    folder = tls.ca_cert.parent
    before = _files(folder)
    with pytest.raises(ConfigError, match=r"ca\.key: exists; .*never overwritten"):
        make_study_tls(folder, ["127.0.0.1"])
    with pytest.raises(ConfigError, match=r"server\.key: exists"):
        issue_server_cert(tls.ca_cert, tls.ca_key, folder, ["127.0.0.1"])
    assert _files(folder) == before


@pytest.mark.parametrize(
    "hosts",
    [[], ["bad host"], ["-bad.example.org"], ["fl..example.org"], ["300.1.2.3"], ["a_b.org"],
     ["127.0.0.1", "x" * 64 + ".org"], ["fe80::1%eth0"], [""]],
)  # fmt: skip
def test_bad_hosts_are_refused_before_anything_is_written(tmp_path: Path, hosts: list[str]) -> None:
    with pytest.raises(ConfigError, match="host"):
        make_study_tls(tmp_path / "tls", hosts)
    assert not (tmp_path / "tls").exists()


def test_reissue_from_an_existing_ca(tmp_path: Path, tls: TlsFiles) -> None:
    server_pem, server_key = issue_server_cert(
        tls.ca_cert, tls.ca_key, tmp_path / "new", ["fl2.example.org"], days=30
    )
    assert stat.S_IMODE(os.stat(server_key).st_mode) == 0o600
    server = _cert(server_pem)
    verifier = PolicyBuilder().store(Store([_cert(tls.ca_cert)]))
    verifier.build_server_verifier(x509.DNSName("fl2.example.org")).verify(server, [])
    assert server.not_valid_after_utc - server.not_valid_before_utc == dt.timedelta(
        days=30, hours=1
    )
    with pytest.raises(ConfigError, match="not the private key of"):
        other = make_study_tls(tmp_path / "other", ["127.0.0.1"])
        issue_server_cert(tls.ca_cert, other.ca_key, tmp_path / "third", ["127.0.0.1"])
    with pytest.raises(ConfigError, match="not a CA certificate"):
        issue_server_cert(tls.server_cert, tls.server_key, tmp_path / "fourth", ["127.0.0.1"])


# --- a real TLS handshake over loopback ----------------------------------------------------------


def _serve_once(server_ctx: ssl.SSLContext) -> tuple[int, threading.Thread, list[BaseException]]:
    """A listening socket on 127.0.0.1 that accepts one connection, does the handshake and
    answers b"ok"; the port, the thread and any server-side error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        with listener:
            listener.settimeout(10)
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread, errors


def _client(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def _server(tls: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    return ctx


def test_tls_handshake_over_loopback(tmp_path: Path, tls: TlsFiles) -> None:
    port, thread, errors = _serve_once(_server(tls))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _client(tls.ca_cert).wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.recv(2) == b"ok"
    thread.join(10)
    assert errors == []

    stranger = make_study_tls(tmp_path / "stranger", ["127.0.0.1"])
    port, thread, errors = _serve_once(_server(tls))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        _client(stranger.ca_cert).wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(10)
    assert errors  # the server saw the client abort the handshake


# --- `securefed keys tls` ------------------------------------------------------------------------


def test_keys_tls_command(tmp_path: Path) -> None:
    app = typer.Typer()
    keys_cli.register(app)
    runner = CliRunner()
    out = tmp_path / "tls"
    res = runner.invoke(
        app, ["keys", "tls", "--out", str(out), "--host", "127.0.0.1", "--host", "localhost",
              "--days", "10"],
        terminal_width=250,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        assert str(out / name) in text
    assert f"ca_sha256 = {certificate_sha256(out / 'ca.pem')}" in text
    server = _cert(out / "server.pem")
    assert server.not_valid_after_utc - server.not_valid_before_utc == dt.timedelta(
        days=10, hours=1
    )
    before = _files(out)
    again = runner.invoke(app, ["keys", "tls", "--out", str(out), "--host", "127.0.0.1"])
    assert again.exit_code == 2, again.output
    assert "never overwritten" in " ".join(again.output.split())
    assert _files(out) == before
    bad = runner.invoke(app, ["keys", "tls", "--out", str(tmp_path / "b"), "--host", "a b"])
    assert bad.exit_code == 2, bad.output
    assert not (tmp_path / "b").exists()
