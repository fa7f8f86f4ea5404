"""The library of an older git revision, importable beside the current one (before/after rows).

:func:`load_package` extracts ``thermanopt/`` of revision ``rev`` (``git archive``) into a
temporary directory and imports it as the package ``thermanopt_before``: its modules import
each other relatively, so the old and the current code run in one process, on the same
inputs, in the same timing rounds. (A few modules import ``thermanopt._backend`` absolutely;
they get the current one.) Returns None, with a note on stdout, where git or the revision is
missing.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

NAME = "thermanopt_before"


def load_package(rev: str) -> Any:
    """The package ``thermanopt`` of git revision ``rev`` as module ``thermanopt_before``."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        tar = subprocess.run(
            ["git", "archive", "--format=tar", rev, "thermanopt"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"(no 'before' rows: git archive {rev} failed)")
        return None
    tmp = pathlib.Path(tempfile.mkdtemp())
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(tmp, filter="data")
    init = tmp / "thermanopt" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        NAME, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


def submodule(package: Any, dotted: str) -> Any:
    """``package.<dotted>`` imported (e.g. ``submodule(old, "manifolds.observable")``)."""
    return importlib.import_module(f"{package.__name__}.{dotted}")
