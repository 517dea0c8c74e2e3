"""
The gRPC part of etc/demo.sh: a grpcio service and a client, with raw-bytes messages (no .proto, no protoc).

  python etc/demo_grpc.py serve PORT      the demo.Echo service on 127.0.0.1:PORT:
                                            Unary(b)        answers "echo from PORT: b"
                                            Count(b"N")     streams N messages "message i of N from PORT"
  python etc/demo_grpc.py call HOST:PORT  calls Unary, Count(3) and an unknown service, printing each reply and the
                                          grpc-status
"""

import sys
from concurrent import futures

import grpc


def _ident(b):
    return b


def serve(port):
    name = b"%d" % (port,)

    def unary(request, context):
        return b"echo from " + name + b": " + request

    def count(request, context):
        n = min(int(request or b"3"), 100)
        for i in range(1, n + 1):
            yield b"message %d of %d from %s" % (i, n, name)

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
        "Count": grpc.unary_stream_rpc_method_handler(count, _ident, _ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    server.add_insecure_port("127.0.0.1:%d" % (port,))
    server.start()
    server.wait_for_termination()


def _status(code):
    return "grpc-status %d %s" % (code.value[0], code.name)


def call(target):
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary("/demo.Echo/Unary", request_serializer=None, response_deserializer=None)
        reply, c = unary.with_call(b"hello grpc", timeout=5)
        print("unary  /demo.Echo/Unary: %s  (%s)" % (reply.decode(), _status(c.code())))

        stream = channel.unary_stream("/demo.Echo/Count", request_serializer=None, response_deserializer=None)
        replies = stream(b"3", timeout=5)
        for r in replies:
            print("stream /demo.Echo/Count: %s" % (r.decode(),))
        print("stream /demo.Echo/Count: end  (%s)" % (_status(replies.code()),))

        other = channel.unary_unary("/demo.Other/Call", request_serializer=None, response_deserializer=None)
        try:
            other(b"x", timeout=5)
        except grpc.RpcError as e:
            print("unary  /demo.Other/Call: no route  (%s, %r)" % (_status(e.code()), e.details()))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "call":
        call(sys.argv[2])
    else:
        sys.exit(__doc__)
