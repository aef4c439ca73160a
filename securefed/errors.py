"""One exception tree for securefed, and the command line's exit codes.

Every class has a stable ``code`` (shown to users and in logs) and an ``exit_code`` used by the CLI:
2 for user errors (bad input, refused operations), 3 for security refusals (tampering, replay,
unknown sender), 4 for audit findings (a protocol claim an audit found broken), 1 for internal
failures. Two exit codes belong to no exception: 5 when a sweep point failed (the others are
written) and 130 when the user interrupted a command (Ctrl-C; rerun it to resume). The ``EXIT_*``
constants below are the whole list (README.md and docs/architecture.md document it).
Messages name the file, case or field and say what to do.
Raise with ``raise ... from exc`` so the cause is kept.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
"""A bug or an unexpected failure inside securefed."""
EXIT_USER = 2
"""Bad input or a refused operation: the user can fix it."""
EXIT_SECURITY = 3
"""A security refusal: tampered, replayed, unknown sender, a protocol the site does not accept."""
EXIT_AUDIT_FINDING = 4
"""An audit found a protocol claim broken."""
EXIT_SWEEP_POINT_FAILED = 5
"""`securefed sweep`: a grid point failed (its row says why; the other points are written)."""
EXIT_INTERRUPTED = 130
"""Interrupted by the user (Ctrl-C, 128 + SIGINT); the resumable commands continue on a rerun."""

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_INTERNAL: "internal error",
    EXIT_USER: "user error",
    EXIT_SECURITY: "security refusal",
    EXIT_AUDIT_FINDING: "audit finding",
    EXIT_SWEEP_POINT_FAILED: "a sweep point failed",
    EXIT_INTERRUPTED: "interrupted",
}

__all__ = [
    "EXIT_AUDIT_FINDING",
    "EXIT_CODES",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SECURITY",
    "EXIT_SWEEP_POINT_FAILED",
    "EXIT_USER",
    "AggregationError",
    "AuditFindingError",
    "AuditLogError",
    "BudgetExceededError",
    "CalibrationError",
    "CaseError",
    "ClusteringError",
    "CodecError",
    "ConfigError",
    "CounterStateError",
    "CryptoError",
    "DataError",
    "EgressRefusedError",
    "EnvelopeError",
    "EvaluationError",
    "FeatureError",
    "InstructionRefusedError",
    "InternalError",
    "KeyError_",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerRollbackError",
    "NoCasesError",
    "OversizeError",
    "PartitionError",
    "PrivacyError",
    "ProtocolError",
    "ProtocolSignatureError",
    "ReplayError",
    "SecurefedError",
    "SecurityError",
    "SiteTrustError",
    "TamperError",
    "TooFewParticipantsError",
    "TrainingError",
    "TruncatedError",
    "UnknownSenderError",
    "UserError",
    "VersionError",
    "WrongKeyError",
    "WrongProtocolError",
    "WrongStageError",
]


class SecurefedError(Exception):
    """Base of every securefed error."""

    code = "SF000"
    exit_code = EXIT_INTERNAL


class UserError(SecurefedError):
    """The input or the request is wrong; the user can fix it."""

    code = "SF100"
    exit_code = EXIT_USER


class InternalError(SecurefedError):
    """A bug or an unexpected failure inside securefed."""

    code = "SF001"
    exit_code = EXIT_INTERNAL


class ConfigError(UserError):
    code = "SF101"


# --- protocol -------------------------------------------------------------------------------
class ProtocolError(UserError):
    """The study protocol is invalid or does not allow the requested operation."""

    code = "SF110"


class ProtocolSignatureError(ProtocolError):
    code = "SF111"
    exit_code = EXIT_SECURITY


class SiteTrustError(ProtocolError):
    """A site refuses a protocol: unsigned, not signed by enough of the governance keys the site
    trusts, approved for another securefed version, or against the site's own policy."""

    code = "SF112"
    exit_code = EXIT_SECURITY


# --- data -----------------------------------------------------------------------------------
class DataError(UserError):
    code = "SF120"


class CaseError(DataError):
    """One case is unusable. Carries the case id and the offending file."""

    code = "SF121"

    def __init__(self, message: str, *, case: str | None = None, path: object = None) -> None:
        super().__init__(message)
        self.case = case
        self.path = path


class NoCasesError(DataError):
    code = "SF122"


class PartitionError(DataError):
    code = "SF123"


class FeatureError(DataError):
    """A radiomic feature could not be computed (names case, modality and feature)."""

    code = "SF124"


# --- privacy --------------------------------------------------------------------------------
class PrivacyError(UserError):
    code = "SF130"


class BudgetExceededError(PrivacyError):
    """A release would exceed the site's privacy budget; refused before any noise was drawn."""

    code = "SF131"


class LedgerError(PrivacyError):
    code = "SF132"


class LedgerCorruptError(LedgerError):
    code = "SF133"
    exit_code = EXIT_SECURITY


class CalibrationError(PrivacyError):
    code = "SF134"


# --- security / crypto / transport ----------------------------------------------------------
class SecurityError(SecurefedError):
    """Something that must never be accepted (tampering, replay, unknown sender)."""

    code = "SF140"
    exit_code = EXIT_SECURITY


class CryptoError(SecurityError):
    code = "SF141"


class KeyError_(CryptoError):  # noqa: N801 - avoid shadowing builtins.KeyError
    """A key file is missing, unreadable, of the wrong role, or the passphrase is wrong."""

    code = "SF142"
    exit_code = EXIT_USER


class EnvelopeError(SecurityError):
    code = "SF150"


class TamperError(EnvelopeError):
    code = "SF151"


class ReplayError(EnvelopeError):
    code = "SF152"


class UnknownSenderError(EnvelopeError):
    code = "SF153"


class OversizeError(EnvelopeError):
    code = "SF154"


class VersionError(EnvelopeError):
    code = "SF155"


class WrongProtocolError(EnvelopeError):
    code = "SF156"


class WrongStageError(EnvelopeError):
    code = "SF157"


class TruncatedError(TamperError):
    """The envelope is shorter (or longer) than its own length fields say."""

    code = "SF158"


class WrongKeyError(EnvelopeError):
    """The envelope was sealed for another recipient or another key."""

    code = "SF159"


class CodecError(EnvelopeError):
    """A payload does not follow the codec format (only ever seen after a signature verified,
    so it points at a bug or an incompatible sender)."""

    code = "SF149"


class CounterStateError(SecurityError):
    """A counter state file is corrupt: refusing rather than risking a counter reuse or a replay."""

    code = "SF148"


# --- server-side stages ---------------------------------------------------------------------
class LedgerRollbackError(SecurityError):
    """A site's ledger, as a release carries it, does not extend the head the server saw last
    (truncated, deleted or replaced: a refunded budget), or does not account for the release."""

    code = "SF147"


class AuditLogError(SecurityError):
    """An audit log was edited, truncated or reordered, or does not match the ledger."""

    code = "SF143"


class AuditFindingError(SecurefedError):
    """An audit found a protocol claim broken (an egress field without its declared protection,
    an empirical epsilon above the claim): exit code 4."""

    code = "SF145"
    exit_code = EXIT_AUDIT_FINDING


class EgressRefusedError(SecurityError):
    """Something about to leave a site is not exactly what its verified protocol declares
    (refused and logged before anything is written for sending)."""

    code = "SF144"


class InstructionRefusedError(SecurityError):
    """A coordinator's message asks a site for something its own accepted protocol does not
    imply (another learning rate, step count, seed, SecAgg+ parameter, neighbour set or unmask
    request): refused before any data is touched, logged at the site, answered with a code."""

    code = "SF146"


class ClusteringError(UserError):
    code = "SF160"


class AggregationError(SecurefedError):
    code = "SF170"


class TooFewParticipantsError(AggregationError):
    code = "SF171"
    exit_code = EXIT_USER


class TrainingError(SecurefedError):
    code = "SF180"


class EvaluationError(SecurefedError):
    code = "SF190"
