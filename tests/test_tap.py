"""The twistd plugin and the command line: --check and `txmesh check` validate without binding anything."""

import os
import subprocess
import sys

import pytest

from tests import support
from txmesh import cli

pytestmark = pytest.mark.timeout(60)

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
GOOD = os.path.join(support.ROOT, "etc", "mesh.yaml")


def twistd(*args):
    env = dict(os.environ, PYTHONPATH=support.ROOT)
    return subprocess.run(TWISTD + list(args), capture_output=True, text=True, timeout=30, cwd=support.ROOT, env=env)


def test_twistd_lists_the_plugin():
    out = twistd("--help")
    assert "txmesh" in out.stdout


def test_check_valid_config_exits_0_without_binding():
    out = twistd("-n", "--pidfile=", "txmesh", "--config", GOOD, "--check")
    assert out.returncode == 0, out.stderr
    assert "is valid" in out.stdout


def test_check_invalid_config_names_file_line_and_key(tmp_path):
    bad = tmp_path / "mesh.yaml"
    bad.write_text("listeners:\n  - name: l\n    protocol: http\n    address: tcp:1:interface=127.0.0.1\n"
                   "    filters:\n      - name: acces_log\n")
    out = twistd("-n", "--pidfile=", "txmesh", "--config", str(bad))
    assert out.returncode == 1
    assert "%s:6: listeners[0].filters[0].name: unknown filter 'acces_log'" % (bad,) in out.stderr


def test_config_is_required():
    out = twistd("-n", "--pidfile=", "txmesh")
    assert out.returncode != 0
    assert "--config is required" in out.stdout + out.stderr


def test_cli_check(tmp_path, capsys):
    assert cli.main(["check", GOOD]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [\n")
    assert cli.main(["check", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err
