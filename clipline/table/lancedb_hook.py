"""Make `clipline-clip` known to LanceDB in every Python process where clipline is installed.

A clipline table records its embedding function by name (`table/embedding.py`), and LanceDB looks
that name up in a registry filled by imports: it has no plugin discovery. So a plain session,

    import lancedb
    lancedb.connect(db).open_table("media").search("a red star", vector_column_name="image_embedding")

would fail with KeyError('clipline-clip') unless something imported clipline first. The package
installs `clipline-lancedb.pth` into site-packages; Python runs its one line at start-up, which
calls `install()`: a finder on `sys.meta_path` that waits for `lancedb.embeddings` to be
imported and then imports `clipline.table.embedding`, which registers the function. Until then it
costs nothing (a name comparison per import) and imports nothing: a process that never uses
LanceDB never loads clipline.
"""

from __future__ import annotations

import sys

# This module is imported at every interpreter start-up, so it imports nothing it can do without,
# not even `typing` (about as costly as the rest of the hook): the types are for readers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

TRIGGER = "lancedb.embeddings"
REGISTRATION = "clipline.table.embedding"


class _RegisterAfterLoading:
    """Runs the real loader of `lancedb.embeddings`, then imports the registration module."""

    def __init__(self, inner: Loader) -> None:
        self.inner = inner

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        try:
            __import__(REGISTRATION)
        except Exception as exc:  # never break `import lancedb` over clipline
            print(f"warning: clipline's LanceDB embedding function is not registered: {exc!r}", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.inner, name)


class _LanceDBFinder:
    """A `sys.meta_path` finder: finds `lancedb.embeddings` through the other finders and wraps its loader."""

    def find_spec(self, name: str, path: Any, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != TRIGGER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoading(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on `sys.meta_path` (once); register now if LanceDB is already imported."""
    if TRIGGER in sys.modules:
        __import__(REGISTRATION)
    elif not any(isinstance(finder, _LanceDBFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LanceDBFinder())
