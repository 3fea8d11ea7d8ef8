"""gradserve op plugins: the ``Op`` contract that every plugin implements."""

from gradserve.ops.contract import Op

__all__ = ["Op"]
