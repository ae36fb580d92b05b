"""Everything is in pyproject.toml but one thing setuptools has no setting for: a `.pth` file at
the top of site-packages. Its one line registers clipline's LanceDB embedding function in every
Python process of the environment (see clipline/table/lancedb_hook.py)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "clipline-lancedb.pth"
PTH_LINE = "import clipline.table.lancedb_hook as hook; hook.install()\n"


class BuildPyWithPth(build_py):
    """Writes the `.pth` beside the packages: at the wheel's root, or, for an editable install
    (whose packages stay in the source tree), at the root of the editable wheel."""

    def run(self) -> None:
        super().run()
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.mkpath(root)
        Path(root, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


if __name__ == "__main__":  # setuptools runs this file as __main__; tests read the constants above
    setup(cmdclass={"build_py": BuildPyWithPth})
