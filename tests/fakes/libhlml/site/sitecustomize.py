"""Test-only: when GAUDI_EXPORTER_TEST_LIBHLML names a library, the real pyhlml loads it instead of the driver's.

On PYTHONPATH only for daemons the tests start (tests/fakes/libhlml.subprocess_env); inert without the variable.
"""

import os

_library = os.environ.get("GAUDI_EXPORTER_TEST_LIBHLML")
if _library:
    import pyhlml.hlml_lib

    pyhlml.hlml_lib.LibHLML.__init__.__defaults__ = (_library,)
