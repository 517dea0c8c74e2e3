"""
A grpcio test service with raw-bytes messages (no protoc step): ``test.Echo`` with the four call kinds.

Run as ``python echo_server.py PORT [NAME]``; it prints ``ready`` once it listens.  SIGUSR1 stops it gracefully
(``server.stop(grace)``: GOAWAY, calls in flight finish, then it exits).  Requests steer it:
  - Unary: ``whoami`` answers NAME; ``deadline`` answers the seconds left to the call; ``sleep:S`` sleeps S seconds; ``status:CODE:DETAILS`` aborts with that status (and a
    grpc-status-details-bin trailer); ``die`` exits the process at once; ``failon:NAME`` aborts with UNAVAILABLE on the server of that NAME and
    answers NAME elsewhere; anything else is echoed.  Metadata whose
    key starts with ``x-echo`` comes back as initial metadata and as trailing metadata (``-bin`` keys included).
  - ServerStream: ``N:SIZE`` answers N messages of SIZE bytes; ``N:SIZE:die`` exits after N messages;
    ``N:SIZE:slow`` waits 0.2 s before each message.
  - ClientStream: answers ``COUNT:TOTALBYTES`` of what it received.
  - Bidi: echoes each message as it arrives.
"""

import os
import signal
import sys
import time
from concurrent import futures

import grpc


def _ident(b):
    return b


def _echoMetadata(context):
    md = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo"))
    if md:
        context.send_initial_metadata(md)
        context.set_trailing_metadata(md)


NAME = b""


def unary(request, context):
    _echoMetadata(context)
    if request == b"whoami":
        return NAME
    if request == b"deadline":
        return b"%.3f" % (context.time_remaining(),)
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
        return b"slept"
    if request.startswith(b"status:"):
        _, code, details = request.decode().split(":", 2)
        context.set_trailing_metadata((("grpc-status-details-bin", b"\x08\x05details"), ("x-detail", "yes")))
        context.abort(grpc.StatusCode[code], details)
    if request == b"die":
        os._exit(1)
    if request.startswith(b"failon:"):  # UNAVAILABLE on the server of that NAME, else its NAME
        if request[7:] == NAME:
            context.abort(grpc.StatusCode.UNAVAILABLE, "unavailable here")
        return NAME
    return request


def serverStream(request, context):
    _echoMetadata(context)
    parts = request.decode().split(":")
    n, size = int(parts[0]), int(parts[1])
    slow = len(parts) > 2 and parts[2] == "slow"
    for i in range(n):
        if slow:
            time.sleep(0.2)
        yield bytes([65 + i % 26]) * size
    if len(parts) > 2 and parts[2] == "die":
        time.sleep(0.2)
        os._exit(1)
    if len(parts) > 2 and parts[2] == "hang":
        time.sleep(30)


def clientStream(requests, context):
    _echoMetadata(context)
    count = total = 0
    for r in requests:
        count += 1
        total += len(r)
    return b"%d:%d" % (count, total)


def bidi(requests, context):
    _echoMetadata(context)
    for r in requests:
        yield r


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
    "ServerStream": grpc.unary_stream_rpc_method_handler(serverStream, _ident, _ident),
    "ClientStream": grpc.stream_unary_rpc_method_handler(clientStream, _ident, _ident),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _ident, _ident),
}

OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20),
           ("grpc.so_reuseport", 1)]  # a second server may take over the port (tests/test_grpc_goaway.py)


def main(port, name=""):
    global NAME
    NAME = name.encode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", HANDLERS),))
    server.add_insecure_port("127.0.0.1:%d" % (port,))
    server.start()
    signal.signal(signal.SIGUSR1, lambda *_: server.stop(10))
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:3])
