"""TLS material checks: a site dials its SuperLink only with a CA certificate it can read."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from securefed.errors import ConfigError

__all__ = ["check_ca_certificate"]

_MAX = 1024 * 1024


def check_ca_certificate(path: str | Path) -> int:
    """The number of PEM certificates in ``path``; ConfigError naming the file when it is
    missing, too large, or holds no readable certificate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: CA certificate not found (the study CA, docs/deployment.md)")
    data = path.read_bytes()
    if len(data) > _MAX:
        raise ConfigError(f"{path}: too large for a CA certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a PEM certificate ({exc}); give the study CA's ca.pem"
        ) from exc
    return len(certs)
