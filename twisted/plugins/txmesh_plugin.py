from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

txmesh = ServiceMaker(
    "txmesh", "txmesh.tap", "A multi-protocol service-mesh sidecar.", "txmesh"
)

# ``twistd -r txmesh-epoll``: the default of ``twistd txmesh`` (txmesh.tap installs it unless -r names another)
txmeshEpoll = Reactor("txmesh-epoll", "txmesh.reactor", "epoll, a lean loop and txmesh's direct-write TCP transport")
