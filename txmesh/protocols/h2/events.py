"""
What txmesh's HTTP/2 connection (L{txmesh.protocols.h2.codec}) reports: the events ``receiveData`` returns, in the
order the frames came, and the errors it raises.  Both errors are L{txmesh.errors.CodecError}s, as every codec's.
"""

from txmesh.errors import CodecError
from txmesh.protocols.h2.frames import ErrorCodes


class ProtocolError(CodecError):
    """
    A connection error (RFC 9113 5.4.1): the connection has queued GOAWAY with ``error_code``; the protocol sends
    what is queued and closes.
    """

    def __init__(self, message, error_code=ErrorCodes.PROTOCOL_ERROR):
        CodecError.__init__(self, message)
        self.error_code = error_code


class StreamClosedError(CodecError):
    """A frame was to be sent on a stream that is not open for sending (ended, reset or unknown)."""


# -- events (what ``receiveData`` reports, in the order the frames came) ---------------------------------------------

class RequestReceived:
    """A request's header block (server side); ``stream_ended`` when it carried END_STREAM."""

    __slots__ = ("stream_id", "headers", "stream_ended")

    def __init__(self, sid, headers, ended):
        self.stream_id = sid
        self.headers = headers
        self.stream_ended = ended


class ResponseReceived(RequestReceived):
    """A final response's header block (client side; 1xx responses are not reported)."""

    __slots__ = ()


class TrailersReceived:
    """A trailing header block (it always ends the stream)."""

    __slots__ = ("stream_id", "headers")

    def __init__(self, sid, headers):
        self.stream_id = sid
        self.headers = headers


class DataReceived:
    """
    A DATA frame's payload; ``flow_controlled_length`` (with padding) is what ``acknowledge`` must be told once
    the data is consumed.
    """

    __slots__ = ("stream_id", "data", "flow_controlled_length", "stream_ended")

    def __init__(self, sid, data, n, ended):
        self.stream_id = sid
        self.data = data
        self.flow_controlled_length = n
        self.stream_ended = ended


class StreamReset:
    """
    A stream ended by RST_STREAM: sent by the peer (``remote_reset``), or by this connection for a stream error
    it found itself (malformed body length, flow control), which the protocol must treat as a reset too.
    """

    __slots__ = ("stream_id", "error_code", "remote_reset")

    def __init__(self, sid, code, remote=True):
        self.stream_id = sid
        self.error_code = code
        self.remote_reset = remote


class WindowUpdated:
    """The peer opened a flow-control window (``stream_id`` 0: the connection's)."""

    __slots__ = ("stream_id", "delta")

    def __init__(self, sid, delta):
        self.stream_id = sid
        self.delta = delta


class RemoteSettingsChanged:
    """The peer's SETTINGS were applied (and acknowledged); ``changed`` maps setting code to new value."""

    __slots__ = ("changed",)

    def __init__(self, changed):
        self.changed = changed


class PingReceived:
    """A PING (already answered with its ACK)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


class PingAckReceived(PingReceived):
    """The ACK of a PING this side sent."""

    __slots__ = ()


class PriorityUpdated:
    """A PRIORITY frame (only counted: txmesh does not prioritise)."""

    __slots__ = ("stream_id",)

    def __init__(self, sid):
        self.stream_id = sid


class ConnectionTerminated:
    """GOAWAY from the peer."""

    __slots__ = ("error_code", "last_stream_id", "additional_data")

    def __init__(self, code, last, debug):
        self.error_code = code
        self.last_stream_id = last
        self.additional_data = debug
