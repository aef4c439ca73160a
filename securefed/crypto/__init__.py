"""Cryptography for securefed: party keys, sealed envelopes (HPKE + Ed25519), protocol
signatures and CKKS helpers. The only package that imports `cryptography` and `tenseal`.

CKKS lives in :mod:`securefed.crypto.ckks` (imported on demand: TenSEAL is heavy); pairwise
masking for secure summation lives in :mod:`securefed.crypto.masking`.
"""

from securefed.crypto.envelope import (
    ENVELOPE_VERSION,
    MAX_ENVELOPE_BYTES,
    EnvelopeHeader,
    TruncatedError,
    WrongKeyError,
    open_envelope,
    seal_envelope,
)
from securefed.crypto.keys import (
    KEMS,
    ROLES,
    KemName,
    KeyPaths,
    KeyPermissionWarning,
    PrivateKeys,
    PublicKeys,
    Role,
    fingerprint,
    generate_keys,
    load_private_keys,
    load_public_keys,
    private_key_path,
    public_key_path,
    verify_ed25519,
    write_keys,
)
from securefed.crypto.protocol_sig import (
    add_signature,
    read_signature,
    read_signatures,
    sign_protocol_hash,
    signature_path,
    trusted_signers,
    verify_protocol_file,
    verify_protocol_hash,
    write_signature,
)

__all__ = [
    "ENVELOPE_VERSION",
    "KEMS",
    "MAX_ENVELOPE_BYTES",
    "ROLES",
    "EnvelopeHeader",
    "KemName",
    "KeyPaths",
    "KeyPermissionWarning",
    "PrivateKeys",
    "PublicKeys",
    "Role",
    "TruncatedError",
    "WrongKeyError",
    "add_signature",
    "fingerprint",
    "generate_keys",
    "load_private_keys",
    "load_public_keys",
    "open_envelope",
    "private_key_path",
    "public_key_path",
    "read_signature",
    "read_signatures",
    "seal_envelope",
    "sign_protocol_hash",
    "signature_path",
    "trusted_signers",
    "verify_ed25519",
    "verify_protocol_file",
    "verify_protocol_hash",
    "write_keys",
    "write_signature",
]
