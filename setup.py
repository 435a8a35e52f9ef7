"""One build step beyond pyproject.toml: ship the top-level ``heuristics/`` and ``search_spaces/`` in the package.

Both folders stay at the top of the repository, the one copy that the source tree, editable installs and the
docs use. A built package (wheel, or ``pip install .``) carries them as ``nbtl/_shipped/heuristics/`` and
``nbtl/_shipped/search_spaces/``, where :func:`nbtl.resources.shipped` finds them. MANIFEST.in puts them in
the sdist, so a wheel built from the sdist has them too. Everything else is configured in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED_DIRS = ("heuristics", "search_spaces")  # = nbtl.resources.SHIPPED_DIRS
PACKAGE_DIR = Path("nbtl", "_shipped")  # = nbtl.resources.PACKAGE_DIR inside the package


class BuildPyWithShippedFiles(build_py):
    """``build_py``, then copy every file of :data:`SHIPPED_DIRS` into the built package."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the source tree's folders
            return
        for name in SHIPPED_DIRS:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(
                    f"{source}: nbtl's wheel must ship {name}/; build from a full checkout or sdist"
                )
            for file in sorted(source.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    target = Path(self.build_lib, PACKAGE_DIR, file.relative_to(ROOT))
                    self.mkpath(str(target.parent))
                    self.copy_file(str(file), str(target))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
