from twisted.application.service import ServiceMaker

txmesh = ServiceMaker(
    "txmesh", "txmesh.tap", "A multi-protocol service-mesh sidecar.", "txmesh"
)
