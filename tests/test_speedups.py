"""
The compiled cores' switch (txmesh/speedups.py, setup.py): ``TXMESH_NO_EXTENSIONS=1`` gives the pure modules,
a fresh build gives the compiled ones, a stale one is never loaded, ``txmesh --version`` says which, and a build
told not to compile (or unable to) still succeeds.  Mode checks run in child processes: the switch acts at import.
"""

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from txmesh import speedups
from txmesh.cli import versionText

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(60)

# every listed module, imported in a child, and how it was loaded
PROBE = """
import importlib, json, sys
from txmesh import speedups
extra = sys.argv[1] if len(sys.argv) > 1 else None
if extra:
    sys.meta_path.insert(0, speedups.SpeedupsFinder(directory=extra))
names = json.loads(sys.argv[2]) if len(sys.argv) > 2 else list(speedups.COMPILED_MODULES)
loaded = {n: speedups.isCompiled(importlib.import_module(n)) for n in names}
print(json.dumps({"loaded": loaded, "describe": speedups.describe()}))
"""


def probe(env, directory="", names=None):
    out = subprocess.run([sys.executable, "-c", PROBE, directory, json.dumps(names or list(speedups.COMPILED_MODULES))],
                         cwd=ROOT, env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def environ(**changes):
    env = {k: v for k, v in os.environ.items() if k != speedups.ENV_SWITCH}
    env.update(changes)
    return env


def haveCompiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    return shutil.which(cc) is not None and headers


def test_the_switch_reads_the_environment():
    assert not speedups.disabledBy({})
    assert not speedups.disabledBy({"TXMESH_NO_EXTENSIONS": ""})
    assert not speedups.disabledBy({"TXMESH_NO_EXTENSIONS": "0"})
    assert speedups.disabledBy({"TXMESH_NO_EXTENSIONS": "1"})


def test_no_extensions_gives_every_pure_module():
    got = probe(environ(TXMESH_NO_EXTENSIONS="1"))
    assert got["loaded"] == {name: False for name in speedups.COMPILED_MODULES}
    assert got["describe"]["mode"] == "pure-python" and got["describe"]["compiled"] == []
    assert set(got["describe"]["pure"].values()) == {"TXMESH_NO_EXTENSIONS=1"}


def test_a_stale_or_missing_build_is_never_loaded(tmp_path):
    name = "txmesh.upstream.lb"
    finder = speedups.SpeedupsFinder(directory=str(tmp_path))
    assert finder.decide(name) == (None, "not built") and finder.find_spec(name) is None
    target = tmp_path / "upstream" / ("lb" + importlib.machinery.EXTENSION_SUFFIXES[0])
    target.parent.mkdir()
    target.write_bytes(b"not really a shared object")
    (tmp_path / speedups.MANIFEST).write_text(json.dumps({name: "0" * 64}))  # built from another source
    assert speedups.SpeedupsFinder(directory=str(tmp_path)).decide(name) == (None, "stale")
    digest = speedups.sourceDigest(os.path.join(ROOT, "txmesh", "upstream", "lb.py"))
    (tmp_path / speedups.MANIFEST).write_text(json.dumps({name: digest}))
    fresh = speedups.SpeedupsFinder(directory=str(tmp_path), modules=[name])
    assert fresh.decide(name) == (str(target), "compiled")
    assert fresh.find_spec(name).origin == str(target)
    assert fresh.find_spec("txmesh.upstream.host") is None  # not a listed module: the ordinary import
    assert speedups.SpeedupsFinder(directory=str(tmp_path), enabled=False).decide(name) == (None, "disabled")


@pytest.mark.skipif(not haveCompiler(), reason="no C compiler or no Python headers: txmesh can only run as Python")
def test_a_fresh_build_gives_the_compiled_modules(tmp_path):
    built = [name for name in speedups.COMPILED_MODULES if speedups.SpeedupsFinder().decide(name)[1] == "compiled"]
    if built:  # this checkout was built (`python setup.py build_ext --inplace`, as .ci/run does): all of it
        got = probe(environ())
        assert got["loaded"] == {name: True for name in speedups.COMPILED_MODULES}
        assert got["describe"]["mode"] == "compiled" and got["describe"]["pure"] == {}
        return
    # not built here: build one small module with setup.py into a temporary directory and load it from there
    name = "txmesh.stream"
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=environ(TXMESH_COMPILE_ONLY=name),
                   check=True, capture_output=True, timeout=50)
    got = probe(environ(), str(tmp_path / "lib" / "txmesh" / "_speedups"), [name])
    assert got["loaded"] == {name: True}


def test_a_build_told_not_to_compile_succeeds_with_nothing_compiled(tmp_path):
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                          "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=environ(TXMESH_NO_EXTENSIONS="1"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "TXMESH_NO_EXTENSIONS is set, not compiling the cores" in out.stderr
    assert not any(f.endswith(".so") for _, _, files in os.walk(tmp_path) for f in files)


def test_version_says_which_mode_runs():
    described = speedups.describe()
    lines = versionText().splitlines()
    assert "hot path %s" % (described["mode"],) in lines
    if described["compiled"]:
        assert "compiled " + " ".join(described["compiled"]) in lines
    pure = subprocess.run([sys.executable, "-c", "from txmesh.cli import main; main(['--version'])"], cwd=ROOT,
                          env=dict(environ(TXMESH_NO_EXTENSIONS="1"), PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=30)
    assert pure.returncode == 0
    lines = pure.stdout.splitlines()
    assert lines[0].startswith("txmesh ") and "hot path pure-python" in lines
    assert "pure (TXMESH_NO_EXTENSIONS=1) " + " ".join(speedups.COMPILED_MODULES) in lines
