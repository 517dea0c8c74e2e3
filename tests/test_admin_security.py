"""
The admin API locked down (issue 14 part 7; txmesh/admin_security.py, txmesh.config._buildAdmin, txmesh.admin):
the address rules at load (loopback, unix: with a file mode, beyond loopback only with a bearer token), the token
check (401 with a challenge, constant-time compare, rotation), ``/config_dump`` redaction, stale socket files, and
a walk over the admin's route table: every page says whether it changes state, and those that do refuse every
method but POST.
"""

import os
import socket
import stat

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.test_admin import FakeControl, post, request
from txmesh.admin import makeAdminSite
from txmesh.admin_security import REDACTED, BearerTokenFile, redactConfig, removeStaleUnixSocket
from txmesh.config import loads
from txmesh.errors import ConfigError
from txmesh.interfaces import IAdminAuthenticator
from txmesh.stats import StatsStore

LISTENERS = """listeners:
- {name: web, address: "tcp:15001:interface=127.0.0.1", default_cluster: b}
clusters: [{name: b, endpoints: [{address: "10.0.0.1:80"}]}]
"""


def load(admin, filename="mesh.yaml"):
    return loads("admin: %s\n" % (admin,) + LISTENERS, filename)


def loadError(admin):
    with pytest.raises(ConfigError) as e:
        load(admin)
    return str(e.value)


@pytest.fixture
def tokenFile(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text("s3cret-token-1\n")
    return str(path)


# -- the address rules, at load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["tcp:9901:interface=127.0.0.1", "tcp:9901:interface=127.0.0.2",
                                     r"tcp6:9901:interface=\:\:1", "tcp:9901:interface=localhost"])
def test_loopback_needs_no_auth(address):
    admin = load("{address: '%s'}" % (address,)).admin
    assert (admin.address, admin.auth) == (address, None)


@pytest.mark.parametrize("address", ["tcp:9901", "tcp:9901:interface=0.0.0.0", "tcp:9901:interface=10.0.0.5",
                                     r"tcp6:9901:interface=\:\:", "systemd:domain=INET:index=0"])
def test_beyond_loopback_without_auth_is_refused_at_load(address):
    assert loadError("{address: '%s'}" % (address,)) == (
        "mesh.yaml:1: admin.address: '%s' listens beyond loopback: the admin API can drain and reconfigure this "
        "proxy, so set admin.auth.bearer_token_file, or bind it to 127.0.0.1, ::1 or a unix: socket" % (address,))


def test_beyond_loopback_with_a_token_file(tokenFile):
    admin = load("{address: 'tcp:9901:interface=10.0.0.5', auth: {bearer_token_file: '%s'}}" % (tokenFile,)).admin
    assert admin.auth.bearerTokenFile == tokenFile


def test_a_relative_token_file_is_relative_to_the_config(tmp_path, tokenFile):
    admin = load("{address: 'tcp:9901', auth: {bearer_token_file: admin.token}}", str(tmp_path / "mesh.yaml")).admin
    assert admin.auth.bearerTokenFile == tokenFile


def test_token_file_errors(tmp_path):
    missing = str(tmp_path / "nope")
    assert loadError("{address: 'tcp:9901', auth: {bearer_token_file: '%s'}}" % (missing,)) == (
        "mesh.yaml:1: admin.auth.bearer_token_file: cannot read %s: No such file or directory" % (missing,))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert loadError("{address: 'tcp:9901', auth: {bearer_token_file: '%s'}}" % (empty,)).endswith(
        "admin.auth.bearer_token_file: %s is empty" % (empty,))
    two = tmp_path / "two"
    two.write_text("a b\n")
    assert "must hold one token of printable ASCII" in loadError(
        "{address: 'tcp:9901', auth: {bearer_token_file: '%s'}}" % (two,))
    assert loadError("{auth: {}}") == "mesh.yaml:1: admin.auth: missing required key 'bearer_token_file'"


def test_unix_socket_gets_mode_0600_unless_told(tmp_path):
    path = tmp_path / "admin.sock"
    admin = load("{address: 'unix:%s'}" % (path,)).admin
    assert (admin.address, admin.unixPath) == ("unix:%s:mode=600" % (path,), str(path))
    assert load("{address: 'unix:%s', mode: '0660'}" % (path,)).admin.address == "unix:%s:mode=660" % (path,)
    assert load("{address: 'unix:%s:mode=640'}" % (path,)).admin.address == "unix:%s:mode=640" % (path,)


@pytest.mark.parametrize("admin, message", [
    ("{address: 'unix:%(dir)s/a.sock', mode: 0600}", "admin.mode: must be an octal file mode as a quoted string, e.g. '0600'"),
    ("{address: 'unix:%(dir)s/a.sock', mode: '0999'}", "admin.mode: must be an octal file mode as a quoted string, e.g. '0600'"),
    ("{address: 'tcp:9901:interface=127.0.0.1', mode: '0600'}", "admin.mode: only for a unix: address"),
    ("{address: 'unix:%(dir)s/a.sock:mode=600', mode: '0600'}", "admin.mode: the address already says mode=; keep one"),
    ("{address: 'unix:%(dir)s/missing/a.sock'}", "admin.address: no directory %(dir)s/missing for the socket"),
])
def test_unix_address_errors(tmp_path, admin, message):
    assert loadError(admin % {"dir": tmp_path}) == "mesh.yaml:1: " + message % {"dir": tmp_path}


# -- the bearer token ---------------------------------------------------------------------------------------------


def guarded(tokenFile):
    stats = StatsStore()
    site = makeAdminSite(stats, None, dict, lambda: True, reactor=Clock(), authenticator=BearerTokenFile(tokenFile))
    return site, stats


def test_every_request_needs_the_token(tokenFile):
    site, stats = guarded(tokenFile)
    r = request(site, b"/ready")
    assert (r.code, r.header(b"www-authenticate")) == (401, b'Bearer realm="txmesh admin"')
    r = request(site, b"/stats", headers=[b"Authorization: Bearer wrong"])
    assert (r.code, r.header(b"www-authenticate")) == (401, b'Bearer realm="txmesh admin", error="invalid_token"')
    assert request(site, b"/nope", headers=[b"Authorization: Basic czNjcmV0LXRva2VuLTE="]).code == 401
    assert request(site, b"/ready", headers=[b"Authorization: Bearer s3cret-token-1"]).code == 200
    assert request(site, b"/ready", headers=[b"authorization: bearer  s3cret-token-1 "]).code == 200
    assert stats.total("admin_rq_unauthorized") == 3


def test_the_token_file_is_read_again_when_it_changes(tokenFile):
    site, _ = guarded(tokenFile)
    auth = [b"Authorization: Bearer s3cret-token-1"]
    assert request(site, b"/ready", headers=auth).code == 200
    with open(tokenFile + ".new", "w") as f:
        f.write("s3cret-token-2")
    os.replace(tokenFile + ".new", tokenFile)  # how a rotation writes it: a new inode
    assert request(site, b"/ready", headers=auth).code == 401
    assert request(site, b"/ready", headers=[b"Authorization: Bearer s3cret-token-2"]).code == 200
    os.unlink(tokenFile)  # unreadable: every request is refused, none is let through
    assert request(site, b"/ready", headers=[b"Authorization: Bearer s3cret-token-2"]).code == 401


def test_the_authenticator_provides_its_interface(tokenFile):
    a = BearerTokenFile(tokenFile)
    assert verifyObject(IAdminAuthenticator, a)
    assert a.authenticate(None) is False and a.authenticate(b"Bearer") is False
    assert a.authenticate(b"Bearer s3cret-token-1") is True


# -- /config_dump ------------------------------------------------------------------------------------------------

PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
RAW = {
    "admin": {"address": "tcp:9901", "auth": {"bearer_token_file": "/etc/txmesh/admin.token"}},
    "listeners": [{"name": "in", "tls": {"certificate_chain_file": "/etc/certs/chain.pem",
                                        "private_key_file": "/etc/certs/key.pem",
                                        "private_key": PEM_KEY,
                                        "session_ticket_keys": [{"inline_bytes": "c2VjcmV0"}],
                                        "validation": {"ca_file": "/etc/certs/ca.pem"}},
                   "filters": [{"name": "ext", "config": {"api_key": "k-123", "token": "t-1", "timeout": "1s"}}]}],
    "clusters": [{"name": "up", "tls": {"private_key": {"filename": "/k.pem", "inline_string": PEM_KEY}}}],
    "registries": [{"name": "etcd", "type": "etcd", "endpoints": ["http://mesh:p4ssw0rd@127.0.0.1:2379"],
                    "password": "p4ssw0rd", "client_secret": 42, "username": "mesh"}],
    "note": "a certificate pasted where it should not be: " + PEM_KEY,
}


def test_redaction_by_key_name_and_by_shape():
    out = redactConfig(RAW)
    tls = out["listeners"][0]["tls"]
    assert tls["certificate_chain_file"] == "/etc/certs/chain.pem"  # paths stay: the file is never read
    assert tls["private_key_file"] == "/etc/certs/key.pem"
    assert tls["private_key"] == REDACTED
    assert tls["session_ticket_keys"] == [{"inline_bytes": REDACTED}]
    assert tls["validation"] == {"ca_file": "/etc/certs/ca.pem"}
    assert out["listeners"][0]["filters"][0]["config"] == {"api_key": REDACTED, "token": REDACTED, "timeout": "1s"}
    assert out["clusters"][0]["tls"]["private_key"] == {"filename": "/k.pem", "inline_string": REDACTED}
    registry = out["registries"][0]
    assert registry["endpoints"] == ["http://mesh:[redacted]@127.0.0.1:2379"]
    assert (registry["password"], registry["client_secret"], registry["username"]) == (REDACTED, REDACTED, "mesh")
    assert out["note"] == REDACTED
    assert out["admin"] == RAW["admin"]  # the token's file, not the token
    assert RAW["listeners"][0]["tls"]["private_key"] == PEM_KEY  # a copy: the loaded config is untouched


def test_config_dump_never_shows_a_secret(tmp_path, tokenFile):
    config = loads("""
admin: {address: "tcp:9901:interface=127.0.0.1", auth: {bearer_token_file: "%s"}}
registries:
- {name: etcd, type: etcd, endpoints: ["http://mesh:p4ssw0rd@127.0.0.1:2379"]}
""" % (tokenFile,) + LISTENERS)
    raw = dict(config.raw, listeners=RAW["listeners"], clusters=RAW["clusters"])  # with TLS blocks (issue 14 1, 2)
    site = makeAdminSite(StatsStore(), None, lambda: raw, lambda: True, reactor=Clock(),
                         authenticator=BearerTokenFile(tokenFile))
    r = request(site, b"/config_dump", headers=[b"Authorization: Bearer s3cret-token-1"])
    assert r.code == 200
    for secret in (b"p4ssw0rd", b"BEGIN", b"MIGHAgEA", b"c2VjcmV0", b"k-123", b"s3cret-token-1"):
        assert secret not in r.body
    assert tokenFile.encode() in r.body and b"/etc/certs/key.pem" in r.body


# -- the route table: state changes by POST only ------------------------------------------------------------------


class FakeReopen:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return 1, []


def everyPage():
    control, reopen = FakeControl(), FakeReopen()
    site = makeAdminSite(StatsStore(), None, dict, lambda: True, reactor=Clock(), control=control,
                         reopenLogs=reopen, registrations=dict, healthcheckFailed=lambda: False)
    return site, control, reopen


# a query that would make any action act if a page took it from a GET
ACTING_QUERY = b"?level=debug&graceful=1"


def test_every_page_says_whether_it_changes_state_and_only_post_changes_it():
    site, control, reopen = everyPage()
    pages = site.resource.pages
    assert {"reopen_logs", "healthcheck", "drain_listeners", "logging", "ready", "config_dump"} <= set(pages)
    undeclared = [name for name, page in pages.items() if not isinstance(page.changesState, bool)]
    assert undeclared == [], "admin pages must set changesState"
    changing = sorted(name for name, page in pages.items() if page.changesState)
    assert changing == ["drain_listeners", "healthcheck", "logging", "reload", "reopen_logs"]
    for name, page in pages.items():
        targets = [b"/" + name.encode()] + ([b"/healthcheck/fail", b"/healthcheck/ok"] if name == "healthcheck" else [])
        if name == "static":  # a directory of the status page's files: each file is a target
            targets = [b"/static/status.js", b"/static/status.css"]
        for target in targets:
            if page.changesState:
                for method in (b"GET", b"HEAD", b"PUT", b"DELETE", b"PATCH"):
                    r = request(site, target + ACTING_QUERY, method=method, headers=[b"Content-Length: 0"])
                    if name == "healthcheck" and target == b"/healthcheck":
                        assert r.code == 404
                        continue
                    assert r.code == 405, (target, method, r.code)
                    assert b"POST" in r.header(b"allow").split(b", ")
            else:
                assert post(site, target).code == 405, target
                assert request(site, target + ACTING_QUERY).code in (200, 400, 503)
    assert (control.calls, control.level, reopen.calls) == ([], "info", 0)  # nothing changed
    assert post(site, b"/logging?level=debug").code == 200 and control.level == "debug"  # POST still does


def test_get_logging_with_a_level_is_405_not_a_silent_read():
    site, control, _ = everyPage()
    r = request(site, b"/logging?level=debug")
    assert (r.code, r.header(b"allow")) == (405, b"POST")
    assert control.level == "info"
    assert request(site, b"/logging").json() == {"level": "info"}


# -- stale socket files -------------------------------------------------------------------------------------------


def test_a_stale_socket_is_removed_a_live_one_and_other_files_are_kept(tmp_path):
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # a crashed process: the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(stale).st_mode)
    assert removeStaleUnixSocket(stale) is True and not os.path.exists(stale)
    live = str(tmp_path / "live.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(live)
    listening.listen(1)
    try:
        assert removeStaleUnixSocket(live) is False and os.path.exists(live)
    finally:
        listening.close()
    regular = tmp_path / "file"
    regular.write_text("x")
    assert removeStaleUnixSocket(str(regular)) is False and regular.exists()
    assert removeStaleUnixSocket(str(tmp_path / "absent")) is False


def test_the_schema_knows_the_admin_keys():
    import json
    from importlib import resources

    import jsonschema
    schema = json.loads(resources.files("txmesh").joinpath("mesh.schema.json").read_text())
    v = jsonschema.Draft202012Validator(schema)
    base = {"listeners": [{"name": "web", "address": "tcp:0"}]}
    assert list(v.iter_errors(dict(base, admin={"address": "unix:/run/a.sock", "mode": "0660"}))) == []
    assert list(v.iter_errors(dict(base, admin={"address": "tcp:9901", "auth": {"bearer_token_file": "t"}}))) == []
    assert list(v.iter_errors(dict(base, admin={"auth": {}}))) != []
    assert list(v.iter_errors(dict(base, admin={"mode": "999"}))) != []
