"""SuperNode authentication keys (Flower node authentication).

A site's SuperNode proves its identity to the SuperLink with an ECDSA key on a NIST curve
(P-384 here), in OpenSSH format, as Flower 1.42 requires (``flower-supernode
--auth-supernode-private-key``; the coordinator registers the public key with ``flwr supernode
register``). The protocol pins each site's node key by fingerprint (``[[sites]].node_key``), so
the coordinator registers only the keys the governance board approved and maps each
authenticated node to its site: a site's identity is its key, not the partition id it claims.

Files: ``node.key`` (private, OpenSSH, mode 0600, never overwritten) and ``node.pub`` (one
OpenSSH line, the only file that leaves the site). Fingerprint: ``sha256:<hex>`` of
``b"securefed-key-v1:ecdsa-p384:"`` + the public key's SSH wire bytes.
"""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from securefed.crypto.keys import fingerprint
from securefed.errors import KeyError_
from securefed.fileio import write_exclusive

__all__ = ["NODE_KEY", "NODE_PUB", "check_node_private_key", "new_node_key", "node_key_fingerprint"]

NODE_KEY = "node.key"
NODE_PUB = "node.pub"
_ALGORITHM = "ecdsa-p384"
_MAX = 16 * 1024


def new_node_key(folder: str | Path) -> tuple[Path, Path, str]:
    """Write ``node.key`` and ``node.pub`` into ``folder`` (refusing to replace either);
    returns their paths and the fingerprint."""
    folder = Path(folder)
    priv, pub = folder / NODE_KEY, folder / NODE_PUB
    for path in (priv, pub):
        if path.exists():
            raise KeyError_(f"{path}: exists; node keys are never overwritten")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_exclusive(priv, private, mode=0o600)
    write_exclusive(pub, public + b"\n", mode=0o644)
    return priv, pub, node_key_fingerprint(pub)


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise KeyError_(f"{path}: {what} not found")
    if path.stat().st_size > _MAX:
        raise KeyError_(f"{path}: too large for a {what}")
    return path.read_bytes()


def node_key_fingerprint(public_path: str | Path) -> str:
    """Fingerprint of an OpenSSH ECDSA P-384 public key file; KeyError_ for anything else."""
    path = Path(public_path)
    data = _read(path, "node public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyError_(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise KeyError_(f"{path}: a node key must be ECDSA P-384 (`securefed site node-key`)")
    return _wire_fingerprint(key)


def _wire_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return fingerprint(_ALGORITHM, base64.b64decode(line.split()[1]))


def check_node_private_key(private_path: str | Path) -> str:
    """The fingerprint of a node private key's public half; KeyError_ for a key that is
    missing, not ECDSA P-384, or readable by others."""
    path = Path(private_path)
    data = _read(path, "node private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyError_(
            f"{path}: private key file has mode {mode:04o} (others may read or replace it); "
            f"run `chmod 600 {path}` and check who had access"
        )
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise KeyError_(f"{path}: not an unencrypted OpenSSH private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise KeyError_(f"{path}: a node key must be ECDSA P-384 (`securefed site node-key`)")
    return _wire_fingerprint(key.public_key())
