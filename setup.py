"""
The compiled cores (issue 10 part 3, txmesh/speedups.py): everything else about the package is in setup.cfg.

``pip install .`` (or ``python setup.py build_ext --inplace`` in a checkout) compiles the modules listed in
``txmesh.speedups.COMPILED_MODULES`` with Cython into txmesh/_speedups/, when it can.  It compiles nothing, and
txmesh runs as pure Python, on PyPy, with ``TXMESH_NO_EXTENSIONS=1`` in the build's environment, without Cython,
or when the C compiler or Python's headers are missing: any failure to build a module is a warning, never a failed
install.
"""

import importlib.util
import json
import os
import platform
import shutil
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def loadSpeedups():
    """txmesh/speedups.py by path: the package is not importable (nor installed) while it is being built."""
    spec = importlib.util.spec_from_file_location("_txmesh_speedups", os.path.join(HERE, "txmesh", "speedups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speedups = loadSpeedups()


def warn(message):
    print("txmesh: %s; txmesh will run as pure Python" % (message,), file=sys.stderr)


def extensions():
    """The Cython extensions to build, or [] (with a warning saying why) when txmesh is to stay pure Python."""
    if platform.python_implementation() != "CPython":
        return []  # PyPy and others: the pure modules are what they run best
    if speedups.disabledBy(os.environ):
        warn("%s is set, not compiling the cores" % (speedups.ENV_SWITCH,))
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        warn("Cython is not installed, not compiling the cores")
        return []
    # TXMESH_COMPILE_ONLY=name,name: only those (tests/test_speedups.py builds one small module this way)
    only = [name for name in os.environ.get("TXMESH_COMPILE_ONLY", "").split(",") if name]
    exts = [Extension(name, [os.path.join("txmesh", speedups.relativePath(name) + ".py")])
            for name in speedups.COMPILED_MODULES if not only or name in only]
    try:
        # the generated C stays under build/, not beside the sources; annotations are not C types (the modules are
        # compiled as plain Python: an ``int`` annotation must not reject a bool or an int subclass)
        return cythonize(exts, build_dir=os.path.join("build", "cython"), quiet=True,
                         compiler_directives={"language_level": 3, "annotation_typing": False})
    except Exception as e:  # a Cython failure (an unsupported construct in a module) must not fail the install
        warn("Cython failed (%s)" % (e,))
        return []


class OptionalBuildExt(build_ext):
    """
    Builds each compiled module into txmesh/_speedups/ (see txmesh/speedups.py), records the digest of each source
    it compiled in ``sources.json`` there, and turns any build failure into a warning.
    """

    def get_ext_fullname(self, ext_name):
        # txmesh.protocols.http1.codec is written to txmesh/_speedups/protocols/http1/codec.<abi>.so: the same last
        # name (its PyInit_codec), a place the ordinary import never looks
        parts = super().get_ext_fullname(ext_name).split(".")
        return ".".join(parts[:1] + ["_speedups"] + parts[1:])

    def run(self):
        self.built = []
        # a module dropped from the list since an earlier build in this tree must not ship in the wheel
        shutil.rmtree(os.path.join(self.build_lib, "txmesh", "_speedups"), ignore_errors=True)
        try:
            super().run()
        except Exception as e:  # no compiler, no headers: CCompilerError, DistutilsPlatformError, OSError...
            warn("the C build failed (%s)" % (e,))
            return
        self.writeManifest()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            warn("could not compile %s (%s)" % (ext.name, e))
            return
        self.built.append(ext.name)

    def copy_extensions_to_source(self):
        # --inplace: what was built (a module that failed has nothing to copy), into directories made as needed
        for ext in self.extensions:
            if ext.name in self.built:
                filename = self.get_ext_filename(self.get_ext_fullname(ext.name))
                target = os.path.join(HERE, filename)
                self.mkpath(os.path.dirname(target))
                self.copy_file(os.path.join(self.build_lib, filename), target, level=self.verbose)

    def writeManifest(self):
        digests = {name: speedups.sourceDigest(os.path.join(HERE, "txmesh", speedups.relativePath(name) + ".py"))
                   for name in self.built}
        places = [self.build_lib] + ([HERE] if self.inplace else [])
        for base in places:
            directory = os.path.join(base, "txmesh", "_speedups")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, speedups.MANIFEST), "w") as f:
                json.dump(digests, f, indent=1, sort_keys=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
