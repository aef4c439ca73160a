"""One exception tree for securefed.

Every class has a stable ``code`` (shown to users and in logs) and an ``exit_code`` used by the CLI:
2 for user errors (bad input, refused operations), 3 for security refusals (tampering, replay,
unknown sender), 4 for audit findings (a protocol claim an audit found broken), 1 for internal
failures. Messages name the file, case or field and say what to do.
Raise with ``raise ... from exc`` so the cause is kept.
"""

from __future__ import annotations

__all__ = [
    "SecurefedError",
    "UserError",
    "InternalError",
    "ConfigError",
    "ProtocolError",
    "ProtocolSignatureError",
    "SiteTrustError",
    "DataError",
    "CaseError",
    "NoCasesError",
    "PartitionError",
    "FeatureError",
    "PrivacyError",
    "BudgetExceededError",
    "LedgerError",
    "LedgerCorruptError",
    "CalibrationError",
    "SecurityError",
    "CryptoError",
    "KeyError_",
    "EnvelopeError",
    "TamperError",
    "ReplayError",
    "UnknownSenderError",
    "OversizeError",
    "VersionError",
    "WrongProtocolError",
    "WrongStageError",
    "TruncatedError",
    "WrongKeyError",
    "CodecError",
    "CounterStateError",
    "LedgerRollbackError",
    "AuditLogError",
    "AuditFindingError",
    "EgressRefusedError",
    "ClusteringError",
    "AggregationError",
    "TooFewParticipantsError",
    "TrainingError",
    "EvaluationError",
]


class SecurefedError(Exception):
    """Base of every securefed error."""

    code = "SF000"
    exit_code = 1


class UserError(SecurefedError):
    """The input or the request is wrong; the user can fix it."""

    code = "SF100"
    exit_code = 2


class InternalError(SecurefedError):
    """A bug or an unexpected failure inside securefed."""

    code = "SF001"
    exit_code = 1


class ConfigError(UserError):
    code = "SF101"


# --- protocol -------------------------------------------------------------------------------
class ProtocolError(UserError):
    """The study protocol is invalid or does not allow the requested operation."""

    code = "SF110"


class ProtocolSignatureError(ProtocolError):
    code = "SF111"
    exit_code = 3


class SiteTrustError(ProtocolError):
    """A site refuses a protocol: unsigned, not signed by enough of the governance keys the site
    trusts, approved for another securefed version, or against the site's own policy."""

    code = "SF112"
    exit_code = 3


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
    exit_code = 3


class CalibrationError(PrivacyError):
    code = "SF134"


# --- security / crypto / transport ----------------------------------------------------------
class SecurityError(SecurefedError):
    """Something that must never be accepted (tampering, replay, unknown sender)."""

    code = "SF140"
    exit_code = 3


class CryptoError(SecurityError):
    code = "SF141"


class KeyError_(CryptoError):  # noqa: N801 - avoid shadowing builtins.KeyError
    """A key file is missing, unreadable, of the wrong role, or the passphrase is wrong."""

    code = "SF142"
    exit_code = 2


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
    exit_code = 4


class EgressRefusedError(SecurityError):
    """Something about to leave a site is not exactly what its verified protocol declares
    (refused and logged before anything is written for sending)."""

    code = "SF144"


class ClusteringError(UserError):
    code = "SF160"


class AggregationError(SecurefedError):
    code = "SF170"


class TooFewParticipantsError(AggregationError):
    code = "SF171"
    exit_code = 2


class TrainingError(SecurefedError):
    code = "SF180"


class EvaluationError(SecurefedError):
    code = "SF190"
