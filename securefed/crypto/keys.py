"""Party keys: an Ed25519 signing key and an HPKE encryption key (X25519, or the ML-KEM-768 +
X25519 post-quantum hybrid) per site, server or governance board.

Files written by :func:`write_keys` into ``DIR``:

- ``<id>.key``: private keys, JSON, mode 0600, created exclusively (never overwritten). The secret
  part is either stored in clear (``"secrets"``) or encrypted with AES-256-GCM under a key derived
  from a passphrase with scrypt (``"encrypted"``); the public part is always readable.
- ``<id>.pub.json``: the public bundle (role, id, kem, public keys and their fingerprints). This is
  the only file that leaves the party.

A fingerprint is ``sha256:<hex>`` of ``b"securefed-key-v1:" + algorithm + b":" + raw public key``
with algorithm ``ed25519``, ``x25519`` or ``mlkem768-x25519`` (raw = ML-KEM public key followed
by the X25519 public key). The protocol pins parties by these fingerprints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from securefed.errors import KeyError_
from securefed.fileio import write_exclusive

__all__ = [
    "KEMS",
    "ROLES",
    "KemName",
    "KeyPaths",
    "KeyPermissionWarning",
    "PrivateKeys",
    "PublicKeys",
    "Role",
    "fingerprint",
    "generate_keys",
    "load_private_keys",
    "load_public_keys",
    "private_key_path",
    "public_key_path",
    "verify_ed25519",
    "write_keys",
]

Role = Literal["site", "server", "governance"]
KemName = Literal["x25519", "mlkem768-x25519"]
ROLES: tuple[str, ...] = get_args(Role)
KEMS: tuple[str, ...] = get_args(KemName)

_PRIVATE_FORMAT = "securefed-private-key"
_PUBLIC_FORMAT = "securefed-public-key"
_FORMAT_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_KEY_FILE = 64 * 1024
# scrypt: 32 MiB of memory, about 0.1 s; limits on what a file may ask for (no DoS by key file).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAX_N = 2**20
_MLKEM_PUB = 1184
_X25519_PUB = 32


class KeyPermissionWarning(UserWarning):
    """Kept for callers that filter it; loose permissions are now refused (KeyError_)."""


def fingerprint(algorithm: str, raw_public: bytes) -> str:
    """``sha256:<hex>`` fingerprint of a raw public key of the given algorithm."""
    prefix = b"securefed-key-v1:" + algorithm.encode("ascii") + b":"
    return "sha256:" + hashlib.sha256(prefix + raw_public).hexdigest()


def verify_ed25519(raw_public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``raw_public``."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise KeyError_(f"{source}: field {what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeyError_(f"{source}: field {what} is not valid base64") from exc


@dataclass(frozen=True)
class PublicKeys:
    """A party's public keys: what goes into the protocol (as fingerprints) and to peers."""

    role: Role
    party_id: str
    kem: KemName
    signing_public: bytes  # raw Ed25519 public key (32 bytes)
    kem_public: bytes  # raw X25519 (32) or ML-KEM-768 (1184) + X25519 (32)

    def __post_init__(self) -> None:
        _check_identity(self.role, self.party_id, self.kem, "public keys")
        if len(self.signing_public) != 32:
            raise KeyError_(f"public keys of {self.party_id}: Ed25519 key must be 32 bytes")
        want = _X25519_PUB if self.kem == "x25519" else _MLKEM_PUB + _X25519_PUB
        if len(self.kem_public) != want:
            raise KeyError_(f"public keys of {self.party_id}: {self.kem} key must be {want} bytes")

    @property
    def signing_fingerprint(self) -> str:
        return fingerprint("ed25519", self.signing_public)

    @property
    def encryption_fingerprint(self) -> str:
        return fingerprint(self.kem, self.kem_public)

    def verifier(self) -> ed25519.Ed25519PublicKey:
        """The Ed25519 public key object."""
        return ed25519.Ed25519PublicKey.from_public_bytes(self.signing_public)

    def hpke_public(self) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        """The HPKE recipient key object."""
        try:
            if self.kem == "x25519":
                return x25519.X25519PublicKey.from_public_bytes(self.kem_public)
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.kem_public[:_MLKEM_PUB]),
                x25519.X25519PublicKey.from_public_bytes(self.kem_public[_MLKEM_PUB:]),
            )
        except ValueError as exc:
            raise KeyError_(f"public keys of {self.party_id}: invalid {self.kem} key") from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _PUBLIC_FORMAT,
            "version": _FORMAT_VERSION,
            "role": self.role,
            "id": self.party_id,
            "kem": self.kem,
            "signing_key": _b64(self.signing_public),
            "encryption_key": _b64(self.kem_public),
            "signing_fingerprint": self.signing_fingerprint,
            "encryption_fingerprint": self.encryption_fingerprint,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<public keys>") -> PublicKeys:
        if not isinstance(data, dict) or data.get("format") not in (
            _PUBLIC_FORMAT,
            _PRIVATE_FORMAT,
        ):
            raise KeyError_(f"{source}: not a securefed key file")
        if data.get("version") != _FORMAT_VERSION:
            raise KeyError_(f"{source}: unsupported key file version {data.get('version')!r}")
        pub = data if data["format"] == _PUBLIC_FORMAT else data.get("public")
        if not isinstance(pub, dict):
            raise KeyError_(f"{source}: missing the public part")
        keys = cls(
            role=pub.get("role"),  # type: ignore[arg-type]
            party_id=pub.get("id"),  # type: ignore[arg-type]
            kem=pub.get("kem"),  # type: ignore[arg-type]
            signing_public=_unb64(pub.get("signing_key"), "signing_key", source),
            kem_public=_unb64(pub.get("encryption_key"), "encryption_key", source),
        )
        for name, actual in (
            ("signing_fingerprint", keys.signing_fingerprint),
            ("encryption_fingerprint", keys.encryption_fingerprint),
        ):
            if name in pub and pub[name] != actual:
                raise KeyError_(f"{source}: {name} does not match the key it describes")
        return keys


@dataclass(frozen=True, repr=False)
class PrivateKeys:
    """A party's private keys. Never printed, logged or serialised except by :func:`write_keys`."""

    public: PublicKeys
    signing: ed25519.Ed25519PrivateKey
    _x25519: x25519.X25519PrivateKey
    _mlkem: mlkem.MLKEM768PrivateKey | None = field(default=None)

    def __repr__(self) -> str:
        p = self.public
        return f"PrivateKeys(role={p.role!r}, id={p.party_id!r}, kem={p.kem!r}, <secret>)"

    @property
    def role(self) -> Role:
        return self.public.role

    @property
    def party_id(self) -> str:
        return self.public.party_id

    def hpke_private(self) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        """The HPKE private key object for decryption."""
        if self._mlkem is None:
            return self._x25519
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message)

    def _secrets_json(self) -> dict[str, str]:
        out = {
            "ed25519": _b64(self.signing.private_bytes_raw()),
            "x25519": _b64(self._x25519.private_bytes_raw()),
        }
        if self._mlkem is not None:
            out["mlkem768_seed"] = _b64(self._mlkem.private_bytes_raw())
        return out


def _check_identity(role: Any, party_id: Any, kem: Any, source: str) -> None:
    if role not in ROLES:
        raise KeyError_(f"{source}: role must be one of {', '.join(ROLES)} (got {role!r})")
    if not isinstance(party_id, str) or not _ID_RE.match(party_id):
        raise KeyError_(
            f"{source}: id {party_id!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    if kem not in KEMS:
        raise KeyError_(f"{source}: kem must be one of {', '.join(KEMS)} (got {kem!r})")


def generate_keys(role: Role, party_id: str, kem: KemName = "x25519") -> PrivateKeys:
    """Fresh keys from the OS CSPRNG."""
    _check_identity(role, party_id, kem, "keys new")
    signing = ed25519.Ed25519PrivateKey.generate()
    xkey = x25519.X25519PrivateKey.generate()
    mkey = mlkem.MLKEM768PrivateKey.generate() if kem == "mlkem768-x25519" else None
    return _assemble(role, party_id, kem, signing, xkey, mkey)


def _assemble(
    role: Role,
    party_id: str,
    kem: KemName,
    signing: ed25519.Ed25519PrivateKey,
    xkey: x25519.X25519PrivateKey,
    mkey: mlkem.MLKEM768PrivateKey | None,
) -> PrivateKeys:
    kem_public = xkey.public_key().public_bytes_raw()
    if mkey is not None:
        kem_public = mkey.public_key().public_bytes_raw() + kem_public
    public = PublicKeys(
        role=role,
        party_id=party_id,
        kem=kem,
        signing_public=signing.public_key().public_bytes_raw(),
        kem_public=kem_public,
    )
    return PrivateKeys(public=public, signing=signing, _x25519=xkey, _mlkem=mkey)


@dataclass(frozen=True)
class KeyPaths:
    private: Path
    public: Path


def private_key_path(folder: str | Path, party_id: str) -> Path:
    return Path(folder) / f"{party_id}.key"


def public_key_path(folder: str | Path, party_id: str) -> Path:
    return Path(folder) / f"{party_id}.pub.json"


def _kdf(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _aad(public: PublicKeys) -> bytes:
    return (
        f"securefed-private-key-v1:{public.role}:{public.party_id}:{public.kem}:"
        f"{public.signing_fingerprint}:{public.encryption_fingerprint}"
    ).encode()


def write_keys(keys: PrivateKeys, folder: str | Path, passphrase: bytes | None = None) -> KeyPaths:
    """Write ``<id>.key`` (0600, exclusive) and ``<id>.pub.json``; refuses to overwrite.

    Only ``<id>.pub.json`` is meant to leave the party."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = KeyPaths(
        private_key_path(folder, keys.party_id), public_key_path(folder, keys.party_id)
    )
    for path in (paths.private, paths.public):
        if path.exists():
            raise KeyError_(f"{path}: already exists; keys are never overwritten (use another DIR)")
    doc: dict[str, Any] = {
        "format": _PRIVATE_FORMAT,
        "version": _FORMAT_VERSION,
        "public": keys.public.to_json(),
    }
    secret_bytes = json.dumps(keys._secrets_json(), sort_keys=True).encode()
    if passphrase is None:
        doc["secrets"] = keys._secrets_json()
    else:
        if not passphrase:
            raise KeyError_("the passphrase is empty; give a non-empty passphrase or none")
        salt, nonce = os.urandom(16), os.urandom(12)
        key = _kdf(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        doc["encrypted"] = {
            "kdf": "scrypt",
            "n": _SCRYPT_N,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
            "salt": _b64(salt),
            "cipher": "aes-256-gcm",
            "nonce": _b64(nonce),
            "ciphertext": _b64(AESGCM(key).encrypt(nonce, secret_bytes, _aad(keys.public))),
        }
    try:
        write_exclusive(paths.private, json.dumps(doc, indent=2).encode() + b"\n", 0o600)
        write_exclusive(
            paths.public, json.dumps(keys.public.to_json(), indent=2).encode() + b"\n", 0o644
        )
    except FileExistsError as exc:
        raise KeyError_(f"{exc.filename}: already exists; keys are never overwritten") from exc
    return paths


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE:
            raise KeyError_(f"{path}: too large for a key file ({size} bytes)")
        return json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise KeyError_(
            f"{path}: key file not found (create one with `securefed keys new`)"
        ) from exc
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read key file ({exc.strerror})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyError_(f"{path}: not a securefed key file (invalid JSON)") from exc


def load_public_keys(path: str | Path, role: Role | None = None) -> PublicKeys:
    """Public keys from a ``.pub.json`` bundle (or the public part of a ``.key`` file)."""
    path = Path(path)
    keys = PublicKeys.from_json(_read_json(path), str(path))
    if role is not None and keys.role != role:
        raise KeyError_(f"{path}: holds {keys.role} keys, but {role} keys are needed here")
    return keys


_MAX_PASSPHRASE_FILE = 4096


def read_passphrase(path: str | Path) -> bytes:
    """A key passphrase from a file: its first line, trailing newline removed; KeyError_ for
    an unreadable, empty or oversized file."""
    path = Path(path)
    try:
        raw = path.read_bytes()[: _MAX_PASSPHRASE_FILE + 1]
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read the passphrase file ({exc.strerror})") from exc
    if len(raw) > _MAX_PASSPHRASE_FILE:
        raise KeyError_(f"{path}: passphrase file is larger than {_MAX_PASSPHRASE_FILE} bytes")
    value = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if not value:
        raise KeyError_(f"{path}: the passphrase file is empty")
    return value


def load_private_keys(
    path: str | Path, passphrase: bytes | None = None, role: Role | None = None
) -> PrivateKeys:
    """Private keys from a ``.key`` file (``path`` may also be the folder holding one key).

    Raises KeyError_ for a missing file, a wrong or missing passphrase, a role other than
    ``role``, a corrupt file, or a file that others may read or write (mode not 0600)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.key"))
        if len(found) != 1:
            raise KeyError_(f"{path}: expected exactly one *.key file, found {len(found)}")
        path = found[0]
    doc = _read_json(path)
    source = str(path)
    if not isinstance(doc, dict) or doc.get("format") != _PRIVATE_FORMAT:
        raise KeyError_(f"{source}: not a securefed private key file (is it a .pub.json?)")
    public = PublicKeys.from_json(doc, source)
    if role is not None and public.role != role:
        raise KeyError_(f"{source}: holds {public.role} keys, but {role} keys are needed here")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:  # readable or writable by others: refused, never used
        raise KeyError_(
            f"{source}: private key file has mode {mode:04o} (others may read or replace it); "
            f"run `chmod 600 {source}` and check who had access"
        )
    if "encrypted" in doc:
        secrets_doc = _decrypt_secrets(doc["encrypted"], passphrase, public, source)
    elif "secrets" in doc:
        if passphrase is not None:
            raise KeyError_(f"{source}: key file is not passphrase-protected; omit the passphrase")
        secrets_doc = doc["secrets"]
    else:
        raise KeyError_(f"{source}: key file has no secret part")
    if not isinstance(secrets_doc, dict):
        raise KeyError_(f"{source}: corrupt secret part")
    try:
        signing = ed25519.Ed25519PrivateKey.from_private_bytes(
            _unb64(secrets_doc.get("ed25519"), "ed25519", source)
        )
        xkey = x25519.X25519PrivateKey.from_private_bytes(
            _unb64(secrets_doc.get("x25519"), "x25519", source)
        )
        mkey = None
        if public.kem == "mlkem768-x25519":
            seed = _unb64(secrets_doc.get("mlkem768_seed"), "mlkem768_seed", source)
            mkey = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    except ValueError as exc:
        raise KeyError_(f"{source}: corrupt private key ({exc})") from exc
    keys = _assemble(public.role, public.party_id, public.kem, signing, xkey, mkey)
    if keys.public != public:
        raise KeyError_(f"{source}: the private keys do not match the public keys in the file")
    try:  # self-test: the signing key works
        keys.public.verifier().verify(keys.sign(b"securefed-self-test"), b"securefed-self-test")
    except InvalidSignature as exc:  # pragma: no cover - guarded by the equality above
        raise KeyError_(f"{source}: signing key self-test failed") from exc
    return keys


def _decrypt_secrets(enc: Any, passphrase: bytes | None, public: PublicKeys, source: str) -> Any:
    if passphrase is None:
        raise KeyError_(f"{source}: key file is passphrase-protected; give --passphrase-file")
    if (
        not isinstance(enc, dict)
        or enc.get("kdf") != "scrypt"
        or enc.get("cipher") != "aes-256-gcm"
    ):
        raise KeyError_(f"{source}: unsupported key encryption")
    n, r, p = enc.get("n"), enc.get("r"), enc.get("p")
    if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)) or not (
        2 <= n <= _SCRYPT_MAX_N and 1 <= r <= 16 and 1 <= p <= 4
    ):
        raise KeyError_(f"{source}: scrypt parameters out of the accepted range")
    salt = _unb64(enc.get("salt"), "salt", source)
    nonce = _unb64(enc.get("nonce"), "nonce", source)
    ciphertext = _unb64(enc.get("ciphertext"), "ciphertext", source)
    if len(nonce) != 12:
        raise KeyError_(f"{source}: bad nonce length")
    key = _kdf(passphrase, salt, n, r, p)
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, _aad(public))
    except InvalidTag as exc:
        raise KeyError_(f"{source}: wrong passphrase (or the key file was modified)") from exc
    try:
        return json.loads(plain)
    except ValueError as exc:  # pragma: no cover - authenticated content
        raise KeyError_(f"{source}: corrupt secret part") from exc
