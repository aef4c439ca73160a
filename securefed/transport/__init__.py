"""Transport: the versioned array codec (no pickle), sealed messages, counters and the replay
guard. Builds on securefed.crypto; knows nothing of features or Flower."""

from securefed.transport.codec import (
    ALLOWED_DTYPES,
    CODEC_VERSION,
    CodecError,
    Decoded,
    decode_arrays,
    encode_arrays,
)
from securefed.transport.messages import (
    OpenedMessage,
    allowed_senders,
    open_message,
    read_message,
    seal_message,
    write_message,
)
from securefed.transport.replay import CounterStateError, ReplayGuard, SendCounter

__all__ = [
    "ALLOWED_DTYPES",
    "CODEC_VERSION",
    "CodecError",
    "CounterStateError",
    "Decoded",
    "OpenedMessage",
    "ReplayGuard",
    "SendCounter",
    "allowed_senders",
    "decode_arrays",
    "encode_arrays",
    "open_message",
    "read_message",
    "seal_message",
    "write_message",
]
