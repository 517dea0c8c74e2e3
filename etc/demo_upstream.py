"""A tiny demo upstream for etc/demo.sh: answers every request with which port served it."""

import sys

from twisted.internet import reactor
from twisted.web import resource, server


class Hello(resource.Resource):
    isLeaf = True

    def __init__(self, name):
        super().__init__()
        self.name = name

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return ("hello from %s: %s %s\n" % (self.name, request.method.decode(), request.uri.decode())).encode()


if __name__ == "__main__":
    for port in sys.argv[1:]:
        reactor.listenTCP(int(port), server.Site(Hello("upstream:" + port)), interface="127.0.0.1")
    reactor.run()
