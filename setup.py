"""gridledger's one compiled part; everything else is declared in pyproject.toml.

``ledger._state_native`` is the optional compiled twin of the state tree's hot loops
(see ``ledger/state_native.py``). It is built when a C compiler, Python's headers and
OpenSSL's headers are present; otherwise the build goes on without it (``optional``)
and the pure-Python definitions run: same results, lower speed.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ledger._state_native",
            ["ledger/_state_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
