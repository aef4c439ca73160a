"""A study CA and the SuperLink's TLS server certificate, without the openssl command.

``make_study_tls`` writes the four files docs/deployment.md makes with openssl into one folder:
``ca.pem`` (the study CA, sent to every site), ``ca.key`` (kept offline at the coordinator),
``server.pem`` and ``server.key`` (the SuperLink's ``--ssl-certfile``/``--ssl-keyfile``).
``issue_server_cert`` reissues the server certificate from an existing CA (also one made with
openssl). Keys are RSA 2048, PEM (PKCS#8) without a passphrase, as Flower's SuperLink reads them,
created with mode 0600; certificates 0644. No file is ever overwritten. Validity starts one hour in
the past (clock skew). Tested in tests/crypto/test_study_ca.py (a real TLS handshake included).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefed.crypto.tls import check_ca_certificate
from securefed.errors import ConfigError
from securefed.fileio import write_exclusive

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "TlsFiles",
    "certificate_sha256",
    "issue_server_cert",
    "make_study_tls",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"

_RSA_BITS = 2048
_SKEW = dt.timedelta(hours=1)
_MAX_KEY = 64 * 1024
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

_EXISTS = (
    "exists; TLS keys and certificates are never overwritten (move the old files away first, "
    "or choose another folder)"
)
_MAX_CN = 64

_SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    """The four files of a study's TLS material."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_study_tls(
    folder: Path, hosts: Sequence[str], *, name: str = "securefed study CA", days: int = 730
) -> TlsFiles:
    """Create ``folder`` if needed and write a new study CA (``ca.pem``, ``ca.key``) and a
    SuperLink certificate for ``hosts`` signed by it (``server.pem``, ``server.key``); ConfigError,
    before anything is written, when one of the files exists or a host or ``days`` is invalid."""
    folder = Path(folder)
    names = _subject_alt_names(hosts)
    _check_days(days)
    if not name.strip():
        raise ConfigError("the CA needs a name (its certificate's CN)")
    files = TlsFiles(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)
    for path in (files.ca_key, files.ca_cert, files.server_key, files.server_cert):
        _refuse_existing(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now() - _SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _SKEW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(files.ca_key, _private_pem(key), 0o600)
    _write(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    check_ca_certificate(files.ca_cert)
    _issue(cert, key, files.server_cert, files.server_key, names, days)
    return files


def issue_server_cert(
    ca_cert: Path, ca_key: Path, folder: Path, hosts: Sequence[str], days: int = 730
) -> tuple[Path, Path]:
    """Write ``server.pem`` and ``server.key`` into ``folder``: a new key and a certificate for
    ``hosts`` signed by the CA in ``ca_cert``/``ca_key`` (unencrypted PEM); returns their paths.
    The certificate ends no later than the CA's. ConfigError naming the file for a CA that is not
    one or whose key does not match, and for an existing server.pem/server.key."""
    ca_cert, ca_key, folder = Path(ca_cert), Path(ca_key), Path(folder)
    names = _subject_alt_names(hosts)
    _check_days(days)
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    for path in (key_path, cert_path):
        _refuse_existing(path)
    cert, key = _load_ca(ca_cert, ca_key)
    _issue(cert, key, cert_path, key_path, names, days)
    return cert_path, key_path


def certificate_sha256(path: Path) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file, as ``openssl x509
    -noout -fingerprint -sha256`` prints it (colon-separated upper-case hex)."""
    path = Path(path)
    check_ca_certificate(path)
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _issue(
    ca: x509.Certificate,
    ca_key: _SigningKey,
    cert_path: Path,
    key_path: Path,
    names: list[x509.GeneralName],
    days: int,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    first = names[0]
    common_name = str(first.value)
    start = _now() - _SKEW
    end = min(start + _SKEW + dt.timedelta(days=days), ca.not_valid_after_utc)
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _private_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _SigningKey]:
    """The CA certificate and its private key, checked to be a CA and a matching pair."""
    if check_ca_certificate(cert_path) != 1:
        raise ConfigError(f"{cert_path}: holds several certificates; give the study CA's alone")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"{cert_path}: not a CA certificate (no basicConstraints CA:TRUE)")
    if not key_path.is_file():
        raise ConfigError(f"{key_path}: CA private key not found")
    if key_path.stat().st_size > _MAX_KEY:
        raise ConfigError(f"{key_path}: too large for a private key")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError as exc:
        raise ConfigError(
            f"{key_path}: the CA key is encrypted; decrypt a copy (openssl pkey -in {key_path.name}"
            " -out ...) for the duration of the command"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{key_path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: the CA key must be RSA or ECDSA")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path}: not the private key of {cert_path}")
    return cert, key


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """One SAN entry per distinct host: an IPAddress when it parses as an IP, else a DNSName."""
    if isinstance(hosts, str):
        hosts = [hosts]
    if not hosts:
        raise ConfigError("no host given: name the address sites dial (--host, a name or an IP)")
    if len(hosts[0].strip()) > _MAX_CN:
        raise ConfigError(
            f"host {hosts[0]!r}: the first host becomes the certificate's CN, at most {_MAX_CN} "
            "characters; put a shorter name or the IP first"
        )
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not _is_dns_name(host):
                raise ConfigError(
                    f"host {host!r}: neither an IP address nor a DNS name; give the name or IP "
                    "that sites dial (e.g. fl.example.org or 203.0.113.10)"
                ) from None
            names.append(x509.DNSName(host.lower()))
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ConfigError(f"host {host!r}: give the IPv6 address without a %scope")
        names.append(x509.IPAddress(address))
    return names


def _is_dns_name(host: str) -> bool:
    """An ASCII host name: dot-separated labels of letters, digits and inner hyphens, at most
    253 characters, a last label not all digits (that would be a mistyped IPv4 address)."""
    labels = host.removesuffix(".").split(".")
    return (
        0 < len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"days = {days}: a certificate must be valid for at least one day")


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise ConfigError(f"{path}: {_EXISTS}")


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        write_exclusive(path, data, mode=mode)
    except FileExistsError as exc:  # created by someone else since the check
        raise ConfigError(f"{path}: {_EXISTS}") from exc


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
