"""Build hsp_rdma: the pure-Python package plus the Cython bindings in hsp_rdma/cext.

Every `hsp_rdma/cext/*.pyx` becomes one extension module linked against rdma-core's
libibverbs and librdmacm (Debian: libibverbs-dev, librdmacm-dev).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def cext_modules():
    pyx = sorted((HERE / "hsp_rdma" / "cext").glob("*.pyx"))
    if not pyx:
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [
        Extension(
            f"hsp_rdma.cext.{p.stem}",
            [str(p.relative_to(HERE))],
            # only the verbs bindings link rdma-core; crc32c.pyx is self-contained
            libraries=["ibverbs", "rdmacm"] if p.stem == "verbs" else [],
            extra_compile_args=["-O2", "-Wno-unused-function"],
        )
        for p in pyx
    ]
    return cythonize(
        exts,
        language_level=3,
        include_path=[str(HERE / "hsp_rdma" / "cext")],
        compiler_directives={"embedsignature": True},
    )


setup(
    name="hsp_rdma",
    version="0.1.0",
    description="High-availability active/standby pairs over RDMA pipes (VIA-style API)",
    packages=find_packages(include=["hsp_rdma", "hsp_rdma.*"]),
    # hsp_rdma/hw-profiles is a symlink to the top-level hw-profiles/: shipped as real files.
    # hsp_rdma/scenarios: the drills hsp-failover-test ships (TOML, no Python package).
    package_data={"hsp_rdma": ["hw-profiles/*.toml", "scenarios/*.toml"],
                  "hsp_rdma.cext": ["*.pxd", "*.pyx"], "hsp_rdma.lab": ["guest/*", "*.sh"]},
    python_requires=">=3.11",
    install_requires=["rich>=13", "pyroute2>=0.7"],
    extras_require={"test": ["pytest>=7", "hypothesis>=6"]},
    ext_modules=cext_modules(),
    entry_points={
        "console_scripts": [
            "hsp-lab=hsp_rdma.cli.lab:main",
            "hsp-bench=hsp_rdma.cli.bench:main",
            "hsp-failover-test=hsp_rdma.cli.failover_test:main",
            "hsp=hsp_rdma.cli.status:main",
            "hsp-nplus1=hsp_rdma.cli.nplus1:main",
        ]
    },
)
