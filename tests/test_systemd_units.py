"""
The systemd units in etc/: ``systemd-analyze verify`` passes on them, and txmesh runs under the conditions they
set that can be reproduced without systemd as PID 1: a listener on a socket passed by name
(``FileDescriptorName=`` → ``systemd:domain=INET:name=...``), and MemoryDenyWriteExecute= (the kernel's
PR_SET_MDWE, the same rule systemd's seccomp filter enforces, applied before txmesh's interpreter starts).

``verify`` checks that every ExecStart=/ExecStartPre=/ExecReload= binary exists, and the units point at the
production venv /opt/txmesh; the test copies them to a temporary directory with ``/opt/txmesh/`` rewritten to this
interpreter's venv (``sys.prefix``, which has ``bin/twistd`` and ``bin/txmesh`` once txmesh is installed, as
.ci/run does), and verifies the copies.  Nothing else in them changes.
"""

import ctypes
import glob
import http.client
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests import support
from tests.test_integration_systemd import CONFIG, NotifySocket

pytestmark = pytest.mark.timeout(40)

ETC = os.path.join(support.ROOT, "etc")
UNITS = sorted(glob.glob(os.path.join(ETC, "*.service")) + glob.glob(os.path.join(ETC, "*.socket")))
ANALYZE = shutil.which("systemd-analyze")
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1


def copyUnits(target, dropIn=None):
    """The units of etc/ in ``target`` with /opt/txmesh/ rewritten to this venv; ``dropIn``: (unit, conf file)."""
    for path in UNITS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "/opt/txmesh/bin/" in text or path.endswith(".socket"), path
        with open(os.path.join(target, os.path.basename(path)), "w", encoding="utf-8") as f:
            f.write(text.replace("/opt/txmesh/", sys.prefix + "/"))
    if dropIn is not None:
        unit, conf = dropIn
        os.makedirs(os.path.join(target, unit + ".d"))
        with open(conf, encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(target, unit + ".d", os.path.basename(conf)), "w", encoding="utf-8") as f:
            f.write(text.replace("/opt/txmesh/", sys.prefix + "/"))
    return sorted(os.path.join(target, os.path.basename(p)) for p in UNITS)


def analyze(*args, cwd):
    if ANALYZE is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian 12: apt-get install systemd); .ci/run installs it")
        pytest.skip("systemd-analyze is not installed")
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def test_units_are_the_expected_ones():
    names = [os.path.basename(p) for p in UNITS]
    assert names == ["txmesh-http.socket", "txmesh-inbound.service", "txmesh-outbound.service", "txmesh.service"]


def test_venv_binaries_exist_for_the_rewritten_units():
    for name in ("twistd", "txmesh"):
        assert os.access(os.path.join(sys.prefix, "bin", name), os.X_OK), "pip install the project into this venv"


@pytest.mark.parametrize("dropIn", [None, "txmesh-low-ports.conf", "txmesh-sockets.conf", "txmesh-hot-restart.conf"])
def test_systemd_analyze_verify(tmp_path, dropIn):
    files = copyUnits(str(tmp_path), dropIn and ("txmesh.service", os.path.join(ETC, dropIn)))
    out = analyze("verify", "--man=no", *files, cwd=str(tmp_path))
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_the_shipped_units_are_hardened(tmp_path):
    files = copyUnits(str(tmp_path))
    for path in files:
        if not path.endswith(".service"):
            continue
        out = analyze("security", "--offline=yes", "--no-pager", path, cwd=str(tmp_path))
        last = out.stdout.strip().splitlines()[-1]
        score = float(last.split("level for ")[1].split(": ")[1].split()[0])
        assert score <= 2.0, last


def mdweSupported():
    """PR_SET_MDWE came with Linux 6.3; PR_GET_MDWE answers -1 (EINVAL) before."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


@pytest.mark.parametrize("mdwe", [False, True], ids=["plain", "memory-deny-write-execute"])
def test_socket_activation_by_name(tmp_path, mdwe):
    if mdwe and not mdweSupported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(64)
    port = listen.getsockname()[1]
    admin = support.freePort()
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG.format(admin=admin, listen=port).replace(
        "tcp:%d:interface=127.0.0.1" % port, "systemd:domain=INET:name=http"))
    notify = NotifySocket(str(tmp_path / "notify"))
    # as systemd does: the socket as fd 3, LISTEN_PID the pid that execs txmesh; then W^X for the whole process
    wrapper = ("import ctypes, os, sys\n"
               "os.dup2(int(sys.argv[1]), 3)\n"
               "os.environ.update(LISTEN_FDS='1', LISTEN_FDNAMES='http', LISTEN_PID=str(os.getpid()))\n"
               "if sys.argv[3] == 'mdwe':\n"
               "  libc = ctypes.CDLL(None, use_errno=True)\n"
               "  if libc.prctl(%d, %d, 0, 0, 0) != 0: sys.exit('PR_SET_MDWE: errno %%d' %% ctypes.get_errno())\n"
               "  import mmap\n"  # the rule holds: a writable and executable mapping is refused
               "  try: mmap.mmap(-1, 4096, prot=7); sys.exit('PR_SET_MDWE did not take')\n"
               "  except PermissionError: pass\n"
               "os.execv(sys.executable, [sys.executable, '-c', 'from twisted.scripts.twistd import run; run()',"
               " '-n', '--pidfile=', 'txmesh', '--config', sys.argv[2]])\n" % (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN))
    env = dict(os.environ, PYTHONPATH=support.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NOTIFY_SOCKET=notify.path)
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(listen.fileno()), str(path), "mdwe" if mdwe else "-"], env=env,
                            pass_fds=(listen.fileno(),), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    listen.close()  # txmesh holds the only copy now
    try:
        try:
            ready = notify.next(20)
        except socket.timeout:
            proc.kill()
            pytest.fail("no READY=1:\n" + proc.communicate(timeout=5)[0].decode("utf-8", "replace"))
        assert ready["READY"] == "1"
        assert "web systemd:domain=INET:name=http" in ready["STATUS"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(5):
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok\n"
        conn.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=15)
        notify.close()
