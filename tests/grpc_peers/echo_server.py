"""
A grpcio test service with raw-bytes messages (no protoc step): ``test.Echo`` with the four call kinds.

Run as ``python echo_server.py PORT``; it prints ``ready`` once it listens.  Requests steer it:
  - Unary: ``sleep:S`` sleeps S seconds; ``status:CODE:DETAILS`` aborts with that status (and a
    grpc-status-details-bin trailer); ``die`` exits the process at once; anything else is echoed.  Metadata whose
    key starts with ``x-echo`` comes back as initial metadata and as trailing metadata (``-bin`` keys included).
  - ServerStream: ``N:SIZE`` answers N messages of SIZE bytes; ``N:SIZE:die`` exits after N messages.
  - ClientStream: answers ``COUNT:TOTALBYTES`` of what it received.
  - Bidi: echoes each message as it arrives.
"""

import os
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


def unary(request, context):
    _echoMetadata(context)
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
        return b"slept"
    if request.startswith(b"status:"):
        _, code, details = request.decode().split(":", 2)
        context.set_trailing_metadata((("grpc-status-details-bin", b"\x08\x05details"), ("x-detail", "yes")))
        context.abort(grpc.StatusCode[code], details)
    if request == b"die":
        os._exit(1)
    return request


def serverStream(request, context):
    _echoMetadata(context)
    parts = request.decode().split(":")
    n, size = int(parts[0]), int(parts[1])
    for i in range(n):
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

OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


def main(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", HANDLERS),))
    server.add_insecure_port("127.0.0.1:%d" % (port,))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]))
