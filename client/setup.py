"""The compiled recording core: ``gradserve/client/_recorder.pyx``, built by Cython where a
C compiler is present. Without one the extension is skipped (``optional``) and the SDK
records with its Python core (``gradserve/client/recorder.py``). Everything else about the
package is in ``pyproject.toml``."""

from Cython.Build import cythonize
from setuptools import Extension, setup

recorder = Extension(
    "gradserve.client._recorder", ["gradserve/client/_recorder.pyx"], optional=True
)
setup(ext_modules=cythonize([recorder]))
