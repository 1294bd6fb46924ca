"""wsss_zoo: transformer WSSS methods as an mmsegmentation 1.x plugin.

``import wsss_zoo`` (or ``custom_imports=dict(imports=['wsss_zoo'])`` in a
config) applies the compatibility fixes of :mod:`wsss_zoo.compat` and
registers every component into mmseg's registries (scope ``mmseg``).
Nothing is downloaded.
"""
from . import compat

compat.apply()

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from .version import __version__  # noqa: E402

__all__ = ['__version__', 'compat', 'datasets', 'evaluation', 'models']
