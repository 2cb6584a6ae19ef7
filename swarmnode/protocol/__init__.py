"""Sans-I/O wire protocol of Layerswarm (spec: ``swarmnode/protocol/README.md``).

Pure functions over bytes: no sockets, no torch. Never pickle, never ``torch.load`` peer data.
"""

from swarmnode.protocol.errors import ProtocolError
from swarmnode.protocol.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    CloseSession,
    Error,
    Forward,
    ForwardResult,
    Info,
    InfoReply,
    Limits,
    Message,
    OpenSession,
    SessionClosed,
    SessionOpened,
    Step,
    StepResult,
    decode,
    encode,
)
from swarmnode.protocol.signing import ResultDigest, result_digest
from swarmnode.protocol.tensors import (
    DTYPE_SIZES,
    WireTensor,
    all_finite,
    tensor_from_numpy,
    tensor_from_wire,
)
from swarmnode.protocol.validation import check_hidden, check_open_session

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "DTYPE_SIZES",
    "CloseSession",
    "Error",
    "Forward",
    "ForwardResult",
    "Info",
    "InfoReply",
    "Limits",
    "Message",
    "OpenSession",
    "ProtocolError",
    "ResultDigest",
    "SessionClosed",
    "SessionOpened",
    "Step",
    "StepResult",
    "WireTensor",
    "all_finite",
    "check_hidden",
    "check_open_session",
    "decode",
    "encode",
    "result_digest",
    "tensor_from_numpy",
    "tensor_from_wire",
]
