"""The documentation site: ``mkdocs build --strict`` passes and covers the package (issue 7).

The build runs in a subprocess from the repository root into a temporary site
directory. The tests skip when mkdocs, mkdocs-material or mkdocstrings-python
are not installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


_DOC_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
needs_mkdocs = pytest.mark.skipif(
    any(_missing(m) for m in _DOC_TOOLS),
    reason="mkdocs, mkdocs-material and mkdocstrings[python] are needed to build the docs",
)

# Entry points (and their sub-modules), not part of the documented API; private modules
# (a leading underscore) are skipped too.
_NOT_API = {"thermanopt.cli", "thermanopt.demo", "thermanopt.__main__"}


def _load_gallery():
    spec = importlib.util.spec_from_file_location("_docs_gallery", DOCS / "hooks" / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _directives() -> dict[str, Path]:
    """``::: module`` directives of the API pages -> page."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for name in re.findall(r"^:::\s*([\w.]+)\s*$", page.read_text(), flags=re.M):
            found[name] = page
    return found


def _nav_pages() -> set[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    return set(re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", text, flags=re.M))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    return out


@needs_mkdocs
def test_strict_build_renders_every_api_page(site):
    for module, page in _directives().items():
        html = (site / "api" / page.stem / "index.html").read_text()
        # the module's own heading anchor and at least its docstring text are rendered
        assert f'id="{module}"' in html, f"{module} not rendered on {page.name}"


@needs_mkdocs
def test_strict_build_renders_math_and_guides(site):
    geometry = (site / "theory" / "dln-geometry" / "index.html").read_text()
    assert geometry.count('class="arithmatex"') > 20  # formulas survive for MathJax
    assert r"K_{ij}" in geometry
    for page in (
        "guide/pymanopt",
        "guide/torch",
        "guide/examples",
        "theory/entropic-forces",
        "theory/symmetry-conventions",
    ):
        assert (site / page / "index.html").is_file(), page
    examples = (site / "guide" / "examples" / "index.html").read_text()
    assert "<!-- examples -->" not in examples and "<!-- gallery -->" not in examples


@needs_mkdocs
def test_key_classes_are_documented(site):
    balanced = (site / "api" / "manifolds-balanced" / "index.html").read_text()
    assert 'id="thermanopt.manifolds.balanced.BalancedManifold"' in balanced
    observable = (site / "api" / "manifolds-observable" / "index.html").read_text()
    assert 'id="thermanopt.manifolds.observable.ObservableQuotient"' in observable
    function = (site / "api" / "function" / "index.html").read_text()
    assert 'id="thermanopt.function.torch"' in function


def test_every_api_page_is_in_nav():
    nav = _nav_pages()
    for page in sorted((DOCS / "api").glob("*.md")):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in the mkdocs.yml nav"
    for page in nav:
        assert (DOCS / page).is_file(), f"nav entry {page} has no file under docs/"


def test_every_public_module_has_an_api_page():
    directives = _directives()

    def documented(name: str, is_package: bool) -> bool:
        if name in directives:
            return True
        if is_package:  # a package is covered by the pages of its modules
            return any(d.startswith(name + ".") for d in directives)
        package = name.rsplit(".", 1)[0]
        # a module is covered by its package's page when that page renders members
        page = directives.get(package)
        return page is not None and "members: false" not in page.read_text()

    missing = []
    for path in sorted((ROOT / "thermanopt").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        parts = parts[:-1] if is_package else parts
        name = ".".join(parts)
        entry_point = any(name == n or name.startswith(n + ".") for n in _NOT_API)
        if name == "thermanopt" or entry_point or any(p.startswith("_") for p in parts):
            continue
        if not documented(name, is_package):
            missing.append(name)
    assert not missing, f"modules without an API page under docs/api/: {missing}"


def _undocumented_public_api() -> list[str]:
    """Public names of the documented modules (``__all__``, else public definitions) and
    the public methods of their classes that have no docstring, own or inherited."""
    import importlib

    import griffe

    package = griffe.load("thermanopt", search_paths=[str(ROOT)], resolve_aliases=False)
    missing = []
    for name, page in _directives().items():
        if "members: false" in page.read_text():
            continue  # overview page: the members are documented on their modules' pages
        module = package[name.removeprefix("thermanopt.")] if name != "thermanopt" else package
        exports = module.exports
        if exports is None:
            exports = [n for n, m in module.members.items() if not n.startswith("_")]
        for export in exports:
            member = module.members.get(str(export))
            if member is None or member.is_alias or member.is_module:
                continue  # re-exported: documented where it is defined
            if (member.is_class or member.is_function) and not member.docstring:
                missing.append(member.path)
            if not member.is_class:
                continue
            for method_name, method in member.members.items():
                if method_name.startswith("_") or method.is_alias or not method.is_function:
                    continue
                if method.docstring:
                    continue
                # an override of a documented base-class method inherits its docstring
                cls = getattr(importlib.import_module(name), member.name)
                if not (inspect.getdoc(getattr(cls, method_name, None)) or "").strip():
                    missing.append(method.path)
    return missing


@needs_mkdocs
def test_public_api_has_docstrings():
    missing = _undocumented_public_api()
    assert not missing, f"public functions/classes/methods without a docstring: {missing}"


def test_gallery_lists_only_existing_figures(tmp_path):
    gallery = _load_gallery()
    docs, examples = tmp_path / "docs", tmp_path / "examples"
    (docs / "guide").mkdir(parents=True)
    examples.mkdir()

    empty = gallery.gallery_markdown(docs / "figures", docs / "guide", examples)
    assert "No figures yet" in empty and "![" not in empty
    assert "No example scripts" in gallery.examples_markdown(examples)

    (docs / "figures").mkdir()
    (docs / "figures" / "entropy_landscape.png").write_bytes(b"\x89PNG\r\n")
    (docs / "figures" / "langevin.png").write_bytes(b"\x89PNG\r\n")
    (docs / "figures" / "langevin.txt").write_text("Stationary law of the sampler.\n")
    (docs / "figures" / "entropy_landscape_depths.png").write_bytes(b"\x89PNG\r\n")
    (docs / "figures" / "other_plot.png").write_bytes(b"\x89PNG\r\n")
    (docs / "figures" / "notes.csv").write_text("not an image")
    (examples / "entropy_landscape.py").write_text('"""Entropy S_N over singular values."""\n')
    (examples / "_helper.py").write_text('"""private"""\n')

    md = gallery.gallery_markdown(docs / "figures", docs / "guide", examples)
    assert "![Entropy S_N over singular values.](../figures/entropy_landscape.png)" in md
    assert "![Stationary law of the sampler.](../figures/langevin.png)" in md
    assert "![Entropy S_N over singular values.](../figures/entropy_landscape_depths.png)" in md
    assert "![Other plot](../figures/other_plot.png)" in md
    assert "notes.csv" not in md

    table = gallery.examples_markdown(examples)
    assert "`python examples/entropy_landscape.py`" in table
    assert "Entropy S_N over singular values." in table
    assert "_helper" not in table


def test_every_docs_figure_has_a_caption_of_what_it_shows():
    """Each figure in docs/figures carries a sidecar caption (used by the gallery)."""
    figures = Path(__file__).resolve().parent.parent / "docs" / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert pngs
    for png in pngs:
        caption = png.with_suffix(".txt")
        assert caption.is_file(), png.name
        assert len(caption.read_text().split()) >= 15, png.name
    landscape = (figures / "entropy_landscape.txt").read_text()
    assert "fixed" in landscape and "constant along s1 + s2" in landscape
