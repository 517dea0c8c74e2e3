"""
The downstream side of one stream of the HTTP/2 listener (L{txmesh.protocols.h2.server}), as its ActiveStream sees
it.
"""

from zope.interface import implementer

from txmesh.interfaces import IDownstreamStream
from txmesh.protocols.h2.flow import ReadPausing
from txmesh.protocols.h2.frames import ErrorCodes


@implementer(IDownstreamStream)
class H2DownstreamStream(ReadPausing):
    """
    The downstream side of one HTTP/2 stream of an H2ServerProtocol (the ``downstream`` object of its
    ActiveStream): its state, and the ActiveStream's calls passed on to the connection.
    """

    __slots__ = ("proto", "sid", "info", "active", "requestEnded", "responseEnded", "headersSent", "paused",
                 "unacked", "swallow", "requestMessages", "responseMessages", "premature", "tunnel", "tunnelOpen")

    def __init__(self, proto, sid, info):
        self.proto = proto
        self.sid = sid
        self.info = info
        self.active = None
        self.headersSent = False
        self.requestEnded = False
        self.responseEnded = False
        self.paused = False
        self.unacked = 0
        self.swallow = False
        self.requestMessages = None
        self.responseMessages = None
        self.premature = True
        self.tunnel = None  # b"CONNECT", or the :protocol of an extended CONNECT (RFC 8441)
        self.tunnelOpen = False  # its 200 went out: DATA frames are the tunnel's bytes

    def writeHeaders(self, response, endStream):
        self.proto.writeStreamHeaders(self, response, endStream)

    def writeData(self, data, endStream):
        self.proto.writeStreamData(self, data, endStream)

    def writeTrailers(self, trailers):
        self.proto.writeStreamTrailers(self, trailers)

    def makeLocalReply(self, status, body=b"", headers=(), cause=None):
        return self.proto.makeLocalReply(status, body, headers, cause)

    def reset(self, reason):
        """The response cannot complete: gRPC clients get a grpc-status naming ``reason``, others RST_STREAM."""
        if self.proto.factory.grpc and not self.responseEnded:
            self.proto.endStreamWithStatus(self, reason)
        else:
            # a tunnel's upstream connection broke: CONNECT_ERROR (RFC 9113 8.5)
            self.proto.resetStream(self, ErrorCodes.CONNECT_ERROR if self.tunnelOpen else ErrorCodes.INTERNAL_ERROR)

    def streamComplete(self, active):
        self.proto.streamEnded(self)
        # the connection has forgotten the stream (every later frame on it finds no stream): drop the ActiveStream,
        # which refers back to this object, so that both are freed as the stream ends, not left to the collector
        self.active = None
