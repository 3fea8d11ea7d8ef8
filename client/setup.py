"""The compiled recording core: ``gradserve/client/compiled_recorder.pyx``, built by Cython where a
C compiler is present. Without one the extension is skipped (``optional``) and the SDK
records with its Python core (``gradserve/client/recorder.py``). Everything else about the
package is in ``pyproject.toml``."""

import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

recorder = Extension(
    "gradserve.client.compiled_recorder",
    ["gradserve/client/compiled_recorder.pyx"],
    # Without debug information: 80 kB instead of 1.8 MB.
    extra_compile_args=[] if sys.platform == "win32" else ["-g0"],
    optional=True,
)
setup(ext_modules=cythonize([recorder]))
