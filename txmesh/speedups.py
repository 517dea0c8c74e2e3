"""
Compiled cores (issue 10 part 3): the one list of modules that ``pip install .`` compiles, and the switch at import
time between each compiled module and its pure-Python source.

The modules listed in L{COMPILED_MODULES} are ordinary Python, compiled as they are by Cython ("pure Python mode",
no ``.pxd`` files, no Cython syntax; docs/performance.md says why Cython and not mypyc).  setup.py builds each one
into ``txmesh/_speedups/`` under the same relative path (``txmesh.protocols.http1.codec`` ->
``txmesh/_speedups/protocols/http1/codec.<abi>.so``), where the ordinary import never finds it, and records the
SHA-256 of the source it compiled in ``txmesh/_speedups/sources.json``.  L{SpeedupsFinder}, which
``txmesh/__init__.py`` puts first on C{sys.meta_path}, loads a listed module from its compiled file, under its own
name, when:

 - ``TXMESH_NO_EXTENSIONS`` is unset, empty or ``0`` in the environment of the process (``=1``: every module is
   imported from its ``.py``, so one install runs both ways);
 - the compiled file is there (no C compiler, no Python headers, PyPy or ``TXMESH_NO_EXTENSIONS=1`` at build time:
   nothing is built and everything runs as Python);
 - it was compiled from the ``.py`` beside it as that file is now: a source edited since the build (a developer's
   tree) runs as Python, never as a stale binary, and L{describe} says ``stale``.

Otherwise the finder declines and Python imports the ``.py`` as usual.  ``txmesh --version``, admin
``/server_info`` and ``txmesh_build_info`` report L{describe}'s mode.  This module imports only the standard
library: setup.py loads it by path, before txmesh is installed.
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys

# the modules that, compiled as they are, cost fewer instructions per request than as Python (bench/cores_ab.py;
# docs/performance.md "Issue 10 part 3: compiled cores"): the HTTP/1.1 codec and its field helpers, the Dubbo codec
# and Hessian2.  Compiling the filter chain, the h2 frame layer and HPACK, route matching, the stream model and the
# load balancers as they are measured no better or worse (a call from Python into a compiled function costs more
# than a Python-to-Python call, which CPython 3.11 inlines), and the router's tests read its source (inspect): they
# stay Python until they are given C types.  Protocol classes (server.py, client.py) stay Python: thin shells.
COMPILED_MODULES = (
    "txmesh.protocols.http1.codec",
    "txmesh.protocols.http1.wire",
    "txmesh.protocols.dubbo.codec",
    "txmesh.protocols.dubbo.hessian2",
)

ENV_SWITCH = "TXMESH_NO_EXTENSIONS"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SPEEDUPS_DIR = os.path.join(PACKAGE_DIR, "_speedups")
MANIFEST = "sources.json"


def disabledBy(environ):
    """True when ``environ`` asks for pure Python (``TXMESH_NO_EXTENSIONS`` set to anything but empty or ``0``)."""
    return environ.get(ENV_SWITCH, "") not in ("", "0")


def relativePath(name):
    """``txmesh.protocols.http1.codec`` -> ``protocols/http1/codec`` (its place under txmesh/ and _speedups/)."""
    return os.path.join(*name.split(".")[1:])


def sourceDigest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class SpeedupsFinder:
    """
    A C{sys.meta_path} finder for L{COMPILED_MODULES}: the compiled file's spec when it may be used (see the module
    docstring), None otherwise (the ordinary import of the ``.py``).

    @param directory: where the compiled modules and ``sources.json`` are (default txmesh/_speedups).
    @param enabled: False: decline every module (``TXMESH_NO_EXTENSIONS=1``).
    """

    def __init__(self, directory=SPEEDUPS_DIR, enabled=True, modules=COMPILED_MODULES):
        self.directory = directory
        self.enabled = enabled
        self.modules = frozenset(modules)
        self._manifest = None

    def manifest(self):
        """{module: SHA-256 of the source it was compiled from}, read once; {} when nothing was built."""
        if self._manifest is None:
            try:
                with open(os.path.join(self.directory, MANIFEST)) as f:
                    self._manifest = json.load(f)
            except (OSError, ValueError):
                self._manifest = {}
        return self._manifest

    def compiledFile(self, name):
        """The compiled file of ``name`` under the directory, or None."""
        base = os.path.join(self.directory, relativePath(name))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.isfile(base + suffix):
                return base + suffix
        return None

    def decide(self, name):
        """``(compiled file or None, state)``, state one of ``compiled``, ``disabled``, ``not built``, ``stale``."""
        if not self.enabled:
            return None, "disabled"
        path = self.compiledFile(name)
        built = self.manifest().get(name)
        if path is None or built is None:
            return None, "not built"
        try:
            current = sourceDigest(os.path.join(PACKAGE_DIR, relativePath(name) + ".py"))
        except OSError:
            current = built  # an install without sources: the build is what there is
        if current != built:
            return None, "stale"
        return path, "compiled"

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        compiled, _ = self.decide(fullname)
        if compiled is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, compiled, loader=importlib.machinery.ExtensionFileLoader(fullname, compiled))


_finder = None


def install(environ=os.environ):
    """Put the finder first on C{sys.meta_path} (once; txmesh/__init__.py calls this)."""
    global _finder
    if _finder is None:
        _finder = SpeedupsFinder(enabled=not disabledBy(environ))
        sys.meta_path.insert(0, _finder)
    return _finder


def isCompiled(module):
    """True when ``module`` (a module object) was loaded from a compiled file."""
    spec = module.__spec__
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def describe():
    """
    What runs: ``{"mode", "compiled", "pure"}``.  ``mode`` is ``compiled`` (every listed module compiled),
    ``partly-compiled`` or ``pure-python``; ``compiled`` lists the compiled modules, ``pure`` maps each other listed
    module to why it runs as Python (``TXMESH_NO_EXTENSIONS=1``, ``not built``, ``stale``).  A module already imported is judged by how
    it was loaded, one not imported yet by what the finder would do.
    """
    finder = install()
    compiled, pure = [], {}
    for name in COMPILED_MODULES:
        module = sys.modules.get(name)
        state = finder.decide(name)[1]
        if module is not None and not isCompiled(module) and state == "compiled":
            state = "imported before the switch"  # the finder would load it, but this process got the .py
        if state == "compiled":
            compiled.append(name)
        else:
            pure[name] = "TXMESH_NO_EXTENSIONS=1" if state == "disabled" else state
    mode = "compiled" if not pure else "partly-compiled" if compiled else "pure-python"
    return {"mode": mode, "compiled": compiled, "pure": pure}
