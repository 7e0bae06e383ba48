"""The docs follow the code: the README's layout tree names every helpers module and folder, and no
document or notebook names a helpers module that does not exist."""

from __future__ import annotations

import importlib
import json
import re

from support import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"
README = (REPO_ROOT / "README.md").read_text()
DOCS = {
    "README.md": README,
    "notebooks/INSTRUCTORS.md": (REPO_ROOT / "notebooks" / "INSTRUCTORS.md").read_text(),
    **{
        f"notebooks/{nb.name}": "\n".join(
            "".join(cell["source"]) for cell in json.loads(nb.read_text())["cells"]
        )
        for nb in sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    },
}


def layout_tree() -> str:
    section = README.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_helpers_module_and_folder() -> None:
    tree = layout_tree()
    names = set(re.findall(r"[\w]+(?:\.py|/)", tree))
    for path in HELPERS.rglob("*.py"):
        if path.name == "__init__.py" and path.parent != HELPERS / "store":
            assert f"{path.parent.name}/" in names, f"the layout misses {path.parent.name}/"
        elif path.name != "__init__.py":
            assert path.name in names, f"the README's layout misses {path.relative_to(REPO_ROOT)}"


def resolves(dotted: str) -> bool:
    """``helpers.a.b`` is a module, or ``helpers.a.b.name`` a name defined in one."""
    try:
        importlib.import_module(dotted)
        return True
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        try:
            return hasattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            return False


def test_every_helpers_path_the_docs_name_exists() -> None:
    for doc, text in DOCS.items():
        for dotted in set(re.findall(r"\bhelpers(?:\.\w+)+", text)):
            assert resolves(dotted), f"{doc} names {dotted}, which does not exist"
        for slashed in set(re.findall(r"\bhelpers/[\w/]+(?:\.py|/)", text)):
            assert (REPO_ROOT / slashed).exists(), f"{doc} names {slashed}, which does not exist"
