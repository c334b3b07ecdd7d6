"""`python -m tlkit.train` entry point; also callable as `tlkit.train(config)`.

The module is made callable so that `tlkit.train` works as the Python API
whether or not this module has been imported as a submodule.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tlkit.training import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    from tlkit.cli import main

    sys.exit(main())
