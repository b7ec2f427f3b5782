"""The pointers into the README and docs/ resolve: a renamed section breaks this test."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# `README, "Section"`, `README "Section"`, `README's "Section"` and `docs/page.md, "Section"`,
# across comment lines.
SECTION = re.compile(r'(README|docs/[\w-]+\.md)(?:\'s)?,?\s+\(?"([^"]+)"')
TRAP = re.compile(r"README trap (\d+)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _sources():
    for pattern in ("maml_dist/**/*.py", "scripts/*.py", "scripts/*.sh", "tests/*.py"):
        # Not this file, whose own examples are patterns, not pointers.
        yield from sorted(p for p in ROOT.glob(pattern) if p != pathlib.Path(__file__).resolve())
    yield from sorted(p for p in (ROOT / "configs").glob("*.py"))
    yield from sorted(p for p in (ROOT / "launch").iterdir() if p.is_file())
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").glob("*.md"))


def _joined(path):
    """The file's text with each line break (and a comment's `#`) read as one space.

    Markdown pages lose their code blocks first: a command's comment is not a pointer.
    """
    text = path.read_text()
    if path.suffix == ".md":
        text = FENCE.sub("", text)
    return re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)


def _headings(page: pathlib.Path) -> list[str]:
    prose = FENCE.sub("", page.read_text())
    return [line.lstrip("#").strip().lower() for line in prose.splitlines() if line[:1] == "#"]


def test_every_section_and_trap_the_code_and_docs_name_exists():
    readme = (ROOT / "README.md").read_text()
    pages = {"README": ROOT / "README.md"}
    pages.update({f"docs/{p.name}": p for p in (ROOT / "docs").glob("*.md")})
    headings = {name: _headings(page) for name, page in pages.items()}
    traps = readme[readme.index("## Traps found on this stack") :]
    traps = traps[: traps.index("\n## ")]
    num_traps = len(re.findall(r"^\d+\. ", traps, re.M))
    assert num_traps >= 10
    found, broken = 0, []
    for path in _sources():
        text = _joined(path)
        for match in SECTION.finditer(text):
            found += 1
            page, name = match.group(1), match.group(2).lower()
            if not any(heading.startswith(name) for heading in headings.get(page, [])):
                broken.append(f"{path.relative_to(ROOT)}: {page} section {match.group(2)!r}")
        for match in TRAP.finditer(text):
            found += 1
            if not 1 <= int(match.group(1)) <= num_traps:
                broken.append(f"{path.relative_to(ROOT)}: {match.group(0)} (of {num_traps})")
    assert found > 40  # the patterns still match how the code cites the README and docs
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages, "docs/ has no pages"
    assert not pages - links, f"not linked from the README: {sorted(pages - links)}"
    assert not links - pages, f"linked but missing: {sorted(links - pages)}"


def _layout_modules(readme: str) -> set[str]:
    """The module paths (relative to maml_dist/) that README's "Layout" tree names.

    A line indented two spaces starts an entry: a module, or a folder (`tasks/`) whose
    description and deeper lines name its modules; continuation lines stay in the entry.
    """
    start = readme.index("## Layout\n")
    opening = readme.index("```\n", start) + 4
    block = readme[opening : readme.index("\n```\n", opening)]
    lines = block.splitlines()
    assert lines[0] == "maml_dist/"
    listed, folder = set(), ""
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # configs/, scripts/, ...: past the package
        if indent == 2:
            first = line.split()[0].rstrip(",")
            folder = first if first.endswith("/") else ""
        listed.update(folder + name for name in re.findall(r"\b\w+\.py\b", line))
    return listed


def test_the_readme_layout_names_every_module():
    # A module added, moved or renamed without its line in "Layout" leaves a stale map.
    package = ROOT / "maml_dist"
    # A sub-package's __init__.py is its folder's line (the registry); the package's own
    # is listed with api.py.
    modules = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.parent == package or p.name != "__init__.py"
    }
    assert len(modules) > 40
    listed = _layout_modules((ROOT / "README.md").read_text())
    unlisted, stale = sorted(modules - listed), sorted(listed - modules)
    assert not unlisted, f"README, Layout, lists none of: {unlisted}"
    assert not stale, f"README, Layout, lists modules that do not exist: {stale}"
