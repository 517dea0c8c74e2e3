"""
What the xDS translation modules share (txmesh.xds.translate, translate_routes): the refusal errors, the check that
every set field of a message is one txmesh maps or knows to have no effect, and the protobuf value helpers.
"""


# Envoy's idle timeout of HTTP connections, downstream and upstream (common_http_protocol_options.idle_timeout),
# written where txmesh's own default differs
ENVOY_IDLE_TIMEOUT = 3600.0


class XdsResourceError(Exception):
    """
    A resource txmesh cannot apply: ``str()`` is the NACK's line for it, ``kind name: field.path: reason``.

    @ivar kind: ``cluster``, ``cluster_load_assignment``, ``listener`` or ``route_configuration``.
    @ivar name: the resource's name.
    @ivar reason: the field path and why.
    """

    def __init__(self, kind, name, reason):
        Exception.__init__(self, "%s %s: %s" % (kind, name, reason))
        self.kind, self.name, self.reason = kind, name, reason


class Refused(Exception):
    """Inside a translation: ``field.path: reason``; the resource's translate function names the resource."""


def naming(kind, name, translate, *args):
    """``translate(*args)``, its Refused raised as an XdsResourceError of the resource ``kind`` ``name``."""
    try:
        return translate(*args)
    except Refused as e:
        raise XdsResourceError(kind, name, str(e)) from None


def check(message, path, handled, ignored=()):
    """
    Refuse any field set in ``message`` (at the field path ``path``) outside ``handled`` and ``ignored`` (fields
    without an effect on what txmesh does).  @raise Refused: naming the first such field.
    """
    for fd, _ in message.ListFields():
        if fd.name not in handled and fd.name not in ignored:
            where = path + "." + fd.name if path else fd.name
            raise Refused("%s: not supported by txmesh (%s)" % (where, _supported(handled)))


def _supported(handled):
    return "it maps %s" % (", ".join(handled),) if handled else "it maps no field of it"


def duration(d):
    """A google.protobuf.Duration as float seconds."""
    return d.seconds + d.nanos / 1e9


def wrapped(message, keys):
    """{key: value} of the wrapper fields (UInt32Value, BoolValue ...) of ``message`` among ``keys`` that are set."""
    return {key: getattr(message, key).value for key in keys if message.HasField(key)}


def unpack(anyMessage, cls, path):
    """The ``cls`` message inside ``anyMessage`` (a google.protobuf.Any).  @raise Refused: it holds another type."""
    message = cls()
    if not anyMessage.Is(cls.DESCRIPTOR) or not anyMessage.Unpack(message):
        raise Refused("%s: expected a %s, got %s" % (path, cls.DESCRIPTOR.full_name,
                                                   anyMessage.type_url or "nothing"))
    return message


def enumName(message, key):
    """The name of the enum field ``key``'s value in ``message`` (``HEAD``, ``TLSv1_3`` ...)."""
    value = getattr(message, key)
    return message.DESCRIPTOR.fields_by_name[key].enum_type.values_by_number[value].name


def dataFile(source, path):
    """A DataSource that names a file (txmesh reads and watches files; inline material is refused)."""
    check(source, path, ("filename",))
    if not source.filename:
        raise Refused("%s: txmesh reads TLS material from files (filename)" % (path,))
    return source.filename



def tlsParams(common, cPath, separator):
    """``tls_params`` as ``min_version``, ``max_version`` (``TLSv1_3`` spelled with ``separator``), ``cipher_suites``."""
    out = {}
    if common.HasField("tls_params"):
        params = common.tls_params
        check(params, cPath + ".tls_params", ("tls_minimum_protocol_version", "tls_maximum_protocol_version",
                                              "cipher_suites"))
        for key, field in (("min_version", "tls_minimum_protocol_version"),
                           ("max_version", "tls_maximum_protocol_version")):
            if getattr(params, field):
                out[key] = enumName(params, field).replace("_", separator)
        if params.cipher_suites:
            out["cipher_suites"] = list(params.cipher_suites) if separator == "_" else ":".join(params.cipher_suites)
    return out



def commonHttpOptions(common, path, out, keys):
    """HttpProtocolOptions' fields named in ``keys`` ({field: mesh.yaml key}) into ``out``; any other refused."""
    check(common, path, tuple(keys))
    for field, key in keys.items():
        if common.HasField(field):
            value = getattr(common, field)
            out[key] = duration(value) if field == "idle_timeout" else value.value


