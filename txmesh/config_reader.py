"""
Reading mesh.yaml: the parsed document with a line for every key path, and typed accessors that raise ConfigErrors.

txmesh.config builds a ``Reader`` and hands it to txmesh.routing_config too.  ``Reader`` checks types, keys,
integers, names and durations; ``endpointString`` and ``hostPort`` check addresses.  Every error names the file,
the line (from the YAML node marks) and the key path (``listeners[0].filters[2].name``).
"""

import re

import yaml

from txmesh.errors import ConfigError
from txmesh.twisted_private import parseServerEndpoint

_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?\Z")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "a mapping", type(None): "null"}


def parseYAML(text, filename):
    """The plain data of a YAML document and a {key path: line} map (rejecting duplicate keys)."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # reads the text: a control character is a ReaderError here
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the configuration is empty", filename=filename, line=1)
        lines = {}
        _recordLines(node, "", lines, filename, set())
        raw = loader.construct_document(node)
        if raw is None:  # only comments, "~", "null" or "---"
            raise ConfigError("the configuration is empty", filename=filename, line=1)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError("invalid YAML: %s" % (e.problem or e.context,), filename=filename,
                          line=mark.line + 1 if mark else None) from e
    except yaml.YAMLError as e:
        raise ConfigError("invalid YAML: %s" % (e,), filename=filename) from e
    except ValueError as e:
        # PyYAML's int(): past 4300 digits Python refuses the conversion
        raise ConfigError("invalid YAML: %s" % (e,), filename=filename) from None
    except RecursionError:
        # PyYAML composes and constructs nodes recursively: "[[[[..." a thousand deep exhausts the stack
        raise ConfigError("invalid YAML: nested too deeply", filename=filename) from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, lines


def _recordLines(node, path, lines, filename, visited):
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in visited:
        # an alias (recursive or not): its paths take the line of the alias itself.  Walking every path through
        # aliases of aliases would be exponential ("billion laughs": 10 aliases of 10 aliases ... 9 deep)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for keyNode, valueNode in node.value:
            key = keyNode.value if isinstance(keyNode, yaml.ScalarNode) else "?"
            if key == "<<":
                continue
            sub = joinPath(path, key)
            if key in seen:
                raise ConfigError("duplicate key '%s'" % (key,), sub, filename, keyNode.start_mark.line + 1)
            seen.add(key)
            lines[sub] = keyNode.start_mark.line + 1
            _recordLines(valueNode, sub, lines, filename, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _recordLines(item, "%s[%d]" % (path, i), lines, filename, visited)


def joinPath(path, key):
    """``key`` appended to the key path ``path``: "a.b", "a[0]"; an empty key gives ``path``."""
    if not key:
        return path
    if not path or key.startswith("["):
        return path + key
    return path + "." + key


class Reader:
    """Typed accessors over the parsed YAML that raise ConfigErrors with file, line and key path."""

    _REQUIRED = object()

    def __init__(self, filename, lines):
        self.filename = filename
        self.lines = lines

    def lineOf(self, path):
        """The line of ``path``, or of its nearest recorded ancestor."""
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("")

    def error(self, reason, path):
        return ConfigError(reason, path, self.filename, self.lineOf(path))

    def check(self, value, path, kind):
        if type(value) is int and kind is float:
            return float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error("must be %s, not %s" % (_TYPE_NAMES[kind], _TYPE_NAMES.get(type(value), "%s" % (
                type(value).__name__,))), path)
        return value

    def mapping(self, value, path, required=(), optional=()):
        """Check ``value`` is a mapping with all ``required`` keys and no key outside required + optional."""
        if value is None and not required:
            return {}
        self.check(value, path, dict)
        allowed = tuple(required) + tuple(optional)
        for key in value:
            if key not in allowed:
                raise self.error("unknown key '%s' (allowed: %s)" % (key, ", ".join(allowed)), joinPath(path, str(key)))
        for key in required:
            if value.get(key) is None:
                raise self.error("missing required key '%s'" % (key,), path)
        return value

    def list(self, m, path, key):
        value = m.get(key)
        if value is None:
            return []
        return self.check(value, joinPath(path, key), list)

    def get(self, m, path, key, kind, default=_REQUIRED):
        """``m[key]`` checked to be ``kind``; absent or null gives ``default``."""
        value = m.get(key)
        if value is None:
            if default is self._REQUIRED:
                raise self.error("missing required key '%s'" % (key,), path)
            return default
        return self.check(value, joinPath(path, key), kind)

    def integer(self, m, path, key, default, low=0, high=None):
        value = self.get(m, path, key, int, default)
        if value is not None and (value < low or (high is not None and value > high)):
            bound = ">= %d" % (low,) if high is None else "between %d and %d" % (low, high)
            raise self.error("must be %s, got %d" % (bound, value), joinPath(path, key))
        return value

    def number(self, m, path, key, default, low, high):
        """``m[key]`` as a float (an integer is accepted) within [low, high]."""
        value = self.get(m, path, key, float, default)
        if value is not None and not low <= value <= high:
            raise self.error("must be between %g and %g, got %g" % (low, high, value), joinPath(path, key))
        return value

    def name(self, m, path, key="name"):
        value = self.get(m, path, key, str)
        if not _NAME.match(value):
            raise self.error("invalid name '%s' (use letters, digits, '_', '.', '-')" % (value,), joinPath(path, key))
        return value

    def duration(self, m, path, key, default):
        """A duration in float seconds: "250ms", "1.5s", "2m", "1h" or a number of seconds."""
        value = m.get(key)
        if value is None:
            return default
        try:
            return parseDuration(value)
        except ValueError as e:
            raise self.error(str(e), joinPath(path, key)) from None


def parseDuration(value):
    """
    Float seconds from a mesh.yaml duration: "250ms", "1.5s", "2m", "1h" or a number of seconds (for filter
    plugins, whose buildConfig has no Reader).  @raise ValueError: saying why, for a ConfigError's reason.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a duration like 250ms, 1.5s, 2m, 1h, not %s" % (
            _TYPE_NAMES.get(type(value), type(value).__name__),))
    if isinstance(value, str):
        text = value.strip()
        match = _DURATION.match(text.lstrip("-"))
        if match is None:
            raise ValueError("invalid duration '%s' (use e.g. 250ms, 1.5s, 2m, 1h)" % (value,))
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if text.startswith("-"):
            seconds = -seconds
    else:
        seconds = float(value)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("must be a duration >= 0, got %s" % (value,))
    return seconds


DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10000, "MILLION": 1000000}


def parseFraction(value):
    """
    A share of requests as ``(numerator, denominator)`` ints, from Envoy's FractionalPercent (``{numerator: n,
    denominator: HUNDRED | TEN_THOUSAND | MILLION}``, denominator HUNDRED when absent; a numerator above the
    denominator counts as the denominator, as Envoy does) or a plain percentage (a number from 0 to 100: a whole
    one over HUNDRED, else kept to a millionth).  A request is sampled when ``random.randrange(denominator) < numerator``.
    @raise ValueError: saying why, for a ConfigError's reason (the key is ``value``'s own).
    """
    if isinstance(value, bool):
        raise ValueError("must be a percentage (0 to 100) or {numerator, denominator}, not a boolean")
    if isinstance(value, (int, float)):
        if not 0 <= value <= 100:
            raise ValueError("a percentage must be between 0 and 100, got %s" % (value,))
        if isinstance(value, int) or value.is_integer():
            return int(value), 100
        return int(round(value * 10000)), 1000000
    if not isinstance(value, dict):
        raise ValueError("must be a percentage (0 to 100) or {numerator, denominator}")
    for key in value:
        if key not in ("numerator", "denominator"):
            raise ValueError("unknown key '%s' (allowed: numerator, denominator)" % (key,))
    numerator = value.get("numerator", 0)
    if isinstance(numerator, bool) or not isinstance(numerator, int) or numerator < 0:
        raise ValueError("numerator must be an integer >= 0")
    name = value.get("denominator", "HUNDRED")
    denominator = DENOMINATORS.get(name) if isinstance(name, str) else None
    if denominator is None:
        raise ValueError("denominator must be one of HUNDRED, TEN_THOUSAND, MILLION, not %r" % (name,))
    return min(numerator, denominator), denominator


def checkFilterKeys(raw, known, context):
    """
    For filter plugins' buildConfig: refuse a ``config`` that is not a mapping or has a key outside ``known``.
    @raise txmesh.errors.ConfigError: made by ``context.error`` (a FilterConfigContext), naming the key.
    """
    if not isinstance(raw, dict):
        raise context.error("must be a mapping")
    for key in raw:
        if key not in known:
            raise context.error("unknown key (expected one of: %s)" % (", ".join(known),), str(key))


def endpointString(r, m, path, default=None):
    """A Twisted server endpoint description, parsed (never listened on) to check it."""
    address = r.get(m, path, "address", str, default)
    p = joinPath(path, "address")
    try:
        kind, args, kwargs = parseServerEndpoint(address)
    except Exception as e:  # the parsers raise ValueError, TypeError, KeyError, OSError (ssl key files) ...
        raise r.error("invalid endpoint '%s': %s" % (address, e), p) from e
    if kind in ("tcp", "tcp6"):
        try:
            port = int(args[0])
        except ValueError as e:
            raise r.error("invalid endpoint '%s': %s" % (address, e), p) from e
        if not 0 <= port <= 65535:
            raise r.error("invalid endpoint '%s': port must be between 0 and 65535" % (address,), p)
    return address


def hostPort(r, address, path):
    """Split "host:port" or "[v6]:port" into (host without brackets, port)."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host or any(c.isspace() for c in host):
        raise r.error("invalid address '%s' (use host:port or [v6]:port)" % (address,), path)
    if not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise r.error("invalid port in '%s' (must be 1..65535)" % (address,), path)
    return host, int(port)
