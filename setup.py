"""toil-arvados: run Toil (and CWL) workflows on Arvados.

Ships the ``arvados`` batch system plugin for Toil, a Keep-backed job store, ``keep:`` URL access,
and a single-machine Arvados-compatible cluster for trying it all out and for tests.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithStartupHook(build_py):
    """Ship ``toil_arvados.pth`` at the top of site-packages (see toil_arvados/startup_hook.py)."""

    def run(self) -> None:
        super().run()
        self.copy_file("toil_arvados.pth", os.path.join(self.build_lib, "toil_arvados.pth"))

setup(
    name="toil-arvados",
    version="0.2.0",
    description="Toil batch system, job store and URL access for Arvados, plus a local Arvados-compatible cluster",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["toil_arvados", "toil_arvados.*"]),
    py_modules=["toil_batch_system_arvados", "toil_url_access_keep"],
    include_package_data=True,
    package_data={"toil_arvados": ["py.typed", "demo/*.cwl", "demo/*.yml", "demo/*.txt", "schemas/*.yml"]},
    install_requires=[
        "toil[cwl]==9.6.0",
        "arvados-python-client==3.2.1",
        # The local cluster's HTTPS API, Keep and websocket event bus.
        "aiohttp>=3.9,<4",
        "cryptography>=41",
    ],
    extras_require={
        # edit-distance and stubserver: optional dependencies of Toil's shipped job store tests.
        # cwltest drives the CWL conformance runs (conformance/run.py).
        "test": ["pytest>=8", "pytest-timeout>=2.2", "edit-distance", "stubserver", "cwltest>=2.6"],
    },
    cmdclass={"build_py": BuildWithStartupHook},
    entry_points={
        "console_scripts": [
            "toil-arvados = toil_arvados.cli:main",
        ],
    },
)
