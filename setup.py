"""Build the compiled modules of telemetry-cy.

Every ``telemetry_cy/<stage>/*.pyx`` becomes an extension module (``telemetry_cy.<stage>.<name>``).
Switches (environment variables):

- ``TELEMETRY_CY_SANITIZE=address,undefined`` (or ``thread``): build with those sanitizers, for the
  fuzz and stress jobs. Run Python with the sanitizer runtime preloaded.
- ``TELEMETRY_CY_DEBUG=1``: ``-O0 -g``, assertions on, Cython bounds checks on.
- ``TELEMETRY_CY_NATIVE=1``: ``-march=native``. Off by default so a wheel built on one machine runs
  on every machine of its architecture (x86_64 and aarch64 alike).
- ``TELEMETRY_CY_ONLY=_decode,_ring``: build only the named modules (a developer's fast loop).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PKG = "telemetry_cy"


def compile_flags():
    # -ffp-contract=off: no fused multiply-add (aarch64 gcc fuses by default), so the compiled
    # engine rounds exactly like the pure-Python twin and results are the same on every machine.
    flags = ["-std=gnu11", "-fno-strict-aliasing", "-ffp-contract=off", "-Wno-unused-function"]
    link = []
    if os.environ.get("TELEMETRY_CY_DEBUG") == "1":
        flags += ["-O0", "-g3", "-UNDEBUG"]
    else:
        flags += ["-O2", "-DNDEBUG"]
    if os.environ.get("TELEMETRY_CY_NATIVE") == "1":
        flags.append("-march=native")
    sanitize = os.environ.get("TELEMETRY_CY_SANITIZE", "").strip()
    if sanitize:
        # -O1 (after -O2, so it wins): AddressSanitizer's recommended level, the fuzz targets' too.
        # The C of a Cython module is large (the engine's ~3 MB); instrumented at -O2 it is the
        # sanitizer job's longest step, at -O1 about half that, with every access still checked.
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
        link += [f"-fsanitize={sanitize}"]
    return flags, link


def extensions():
    only = {m for m in os.environ.get("TELEMETRY_CY_ONLY", "").split(",") if m}
    cflags, ldflags = compile_flags()
    exts = []
    for pyx in sorted((HERE / PKG).rglob("*.pyx")):
        if only and pyx.stem not in only:
            continue
        module = ".".join(pyx.relative_to(HERE).with_suffix("").parts)
        exts.append(
            Extension(
                module,
                [str(pyx.relative_to(HERE))],
                include_dirs=[str(Path(PKG) / "includes")],
                extra_compile_args=cflags,
                extra_link_args=ldflags,
            )
        )
    debug = os.environ.get("TELEMETRY_CY_DEBUG") == "1"
    return cythonize(
        exts,
        nthreads=os.cpu_count() or 1,
        language_level=3,
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
            "embedsignature": True,
        },
    )


class ParallelBuildExt(build_ext):
    """build_ext with one compile job per CPU unless ``-j`` says otherwise: a fresh install (pip
    install, which passes no ``-j``) compiles several modules of megabytes of C each, and one at a
    time that is most of the install on a 2-core machine."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=extensions(), cmdclass={"build_ext": ParallelBuildExt})
