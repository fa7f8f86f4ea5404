"""MkDocs hook: fill the examples page from what exists at build time.

``mkdocs build --strict`` fails on a link to a missing file, and the example
figures are produced by the example scripts (they are copied into
``docs/figures/`` later). So the examples page holds two markers that this hook
replaces when the site is built:

- ``<!-- examples -->``: a table of the scripts in ``examples/*.py`` (repository
  root) with the first line of each module docstring and its command line;
- ``<!-- gallery -->``: every image in ``docs/figures/`` (``.png``, ``.svg``,
  ``.jpg``), captioned by a sidecar ``<stem>.txt`` if there is one, else by the
  first docstring line of ``examples/<stem>.py`` (or of ``examples/<prefix>.py``
  for an image named ``<prefix>_<anything>``), else by the file name.

Only files that exist are referenced, so the page builds with any subset of
figures (none included). Registered in ``mkdocs.yml`` under ``hooks:``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

EXAMPLES_MARKER = "<!-- examples -->"
GALLERY_MARKER = "<!-- gallery -->"
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")


def _first_docstring_line(script: Path) -> str:
    """First non-empty line of a script's module docstring ('' if none or unparsable)."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        return ""
    for line in (doc or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _humanize(stem: str) -> str:
    words = stem.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def examples_markdown(examples_dir: Path) -> str:
    """Markdown table of ``examples_dir/*.py`` (text only, no links)."""
    scripts = sorted(p for p in Path(examples_dir).glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        return "*No example scripts are in `examples/` yet.*\n"
    rows = ["| Script | What it shows | Run it |", "|---|---|---|"]
    for script in scripts:
        summary = _escape_cell(_first_docstring_line(script) or _humanize(script.stem))
        rows.append(f"| `examples/{script.name}` | {summary} | `python examples/{script.name}` |")
    return "\n".join(rows) + "\n"


def _caption(image: Path, examples_dir: Path) -> str:
    sidecar = image.with_suffix(".txt")
    if sidecar.is_file():
        text = " ".join(sidecar.read_text(encoding="utf-8").split())
        if text:
            return text
    # the script of the same name, else the longest script name that prefixes the image's
    scripts = sorted(Path(examples_dir).glob("*.py"), key=lambda p: -len(p.stem))
    for script in scripts:
        if image.stem == script.stem or image.stem.startswith(script.stem + "_"):
            line = _first_docstring_line(script)
            if line:
                return line
            break
    return _humanize(image.stem)


def gallery_markdown(figures_dir: Path, page_dir: Path, examples_dir: Path) -> str:
    """Markdown images for every figure in ``figures_dir``, linked relative to ``page_dir``."""
    figures_dir = Path(figures_dir)
    images = (
        sorted(p for p in figures_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if figures_dir.is_dir()
        else []
    )
    if not images:
        return (
            "*No figures yet.* Run the example scripts above (or `thermanopt demo`); "
            "the PNGs copied into `docs/figures/` appear here on the next build.\n"
        )
    blocks = []
    for image in images:
        rel = Path(os.path.relpath(image, page_dir)).as_posix()
        caption = _caption(image, examples_dir)
        alt = caption.replace("[", "(").replace("]", ")")
        blocks.append(f"### {_humanize(image.stem)}\n\n![{alt}]({rel})\n\n*{caption}*\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs event: replace the markers on the page that carries them."""
    if EXAMPLES_MARKER not in markdown and GALLERY_MARKER not in markdown:
        return markdown
    docs_dir = Path(config["docs_dir"])
    repo_root = Path(config["config_file_path"]).resolve().parent
    examples_dir = repo_root / "examples"
    page_dir = (docs_dir / page.file.src_path).parent
    markdown = markdown.replace(EXAMPLES_MARKER, examples_markdown(examples_dir))
    return markdown.replace(
        GALLERY_MARKER, gallery_markdown(docs_dir / "figures", page_dir, examples_dir)
    )
