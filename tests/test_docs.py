"""The documentation (README.md, docs/, mkdocs.yml): the site builds under `mkdocs build --strict`, every relative
link resolves to a file or folder of the repository (and to a heading, for a link into a Markdown file), and every
config a documented `run.py` command selects exists.

Pages are read as Python-Markdown renders them for MkDocs (extensions toc, tables, fenced_code), so links and
commands are found the way the site shows them, never inside a code span by accident. MkDocs itself cannot fail on a
link to a repository file outside docs/ (it reports those at the level of a missing page), so those are checked here.
"""
from __future__ import annotations

import html
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
import pytest
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class _Rendered(HTMLParser):
    """Link targets (a href, img src), heading ids and the text of every code element of one rendered page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.code: list[str] = []
        self._code_depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.links.append(attrs["src"])
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "code":
            self._code_depth += 1
            self.code.append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._code_depth -= 1

    def handle_data(self, data):
        if self._code_depth:
            self.code[-1] += data


def render(page: Path) -> _Rendered:
    parsed = _Rendered()
    parsed.feed(markdown.markdown(page.read_text(encoding="utf-8"), extensions=["toc", "tables", "fenced_code"]))
    return parsed


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict` succeeds (no missing page in the nav, no page left out of it, no broken anchor) and
    every nav page produced its index.html."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    # the INFO lines list every link to a repository file (checked below); keep the warnings that failed it
    assert done.returncode == 0, "\n".join(l for l in (done.stdout + done.stderr).splitlines()
                                         if not l.startswith("INFO"))
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def nav_pages(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from nav_pages(value)
            else:
                yield value

    pages = list(nav_pages(config["nav"]))
    assert {Path(p).name for p in pages} == {p.name for p in (ROOT / "docs").glob("*.md")}
    for page in pages:   # use_directory_urls (the default): docs/x.md -> site/x/index.html
        stem = Path(page).with_suffix("")
        built = site / ("index.html" if stem.name == "index" else stem / "index.html")
        assert built.is_file(), f"{page}: no {built.relative_to(site)} in the built site"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    """Every relative link (a href, img src) names an existing path inside the repository, and a link into a
    Markdown file with a #fragment names one of its headings (slugs as MkDocs' toc makes them)."""
    rendered = render(page)
    broken = []
    for target in rendered.links:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue   # external
        if target.startswith("/"):
            broken.append(f"{target} (rooted: breaks in a clone; write it relative to {rel(page)})")
            continue
        path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not path.exists():
            broken.append(f"{target} (no {path})")
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif parts.fragment and path.suffix == ".md" and parts.fragment not in render(path).ids:
            broken.append(f"{target} (no heading #{parts.fragment} in {rel(path)})")
    assert not broken, f"{rel(page)}: broken links:\n  " + "\n  ".join(broken)


def run_commands(page: Path) -> list[list[str]]:
    """The words after `run.py` of every command in the page's code (blocks and spans), continuation lines joined
    and comments dropped."""
    commands = []
    for code in render(page).code:
        for line in html.unescape(code).replace("\\\n", " ").splitlines():
            if "run.py" in line:   # only command lines go through shlex (prose in code may hold an apostrophe)
                words = shlex.split(line, comments=True)
                commands.append(words[words.index("run.py") + 1:])
    return commands


def config_options(group: str) -> set[str] | None:
    """The option names of a config group: conf/<group>/*.yaml and those Hydra's plugins register (the joblib
    launcher); None when no such group exists."""
    Plugins.instance()   # registers the plugins' configs in the ConfigStore
    names = {p.stem for p in (CONF / group).glob("*.yaml")} if (CONF / group).is_dir() else set()
    try:
        names |= {Path(n).stem for n in ConfigStore.instance().list(group)}
    except OSError:
        pass
    return names if names or (CONF / group).is_dir() else None


def declared_configs() -> set[str]:
    """Configs the docs show how to create (a code block headed `# conf/method/my_method.yaml`)."""
    declared = set()
    for page in PAGES:
        for code in render(page).code:
            first = code.lstrip().split("\n", 1)[0]
            if first.startswith("# conf/") and ".yaml" in first:
                declared.add(first[2:first.index(".yaml")].removeprefix("conf/"))
    return declared


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_run_commands_name_existing_configs(page):
    """Every `group=name` of a documented `python run.py` command (each of a multirun's comma-separated names)
    names a config of that group; a key with no dot is a config group or a top-level key of conf/config.yaml."""
    top_level = set(yaml.safe_load((CONF / "config.yaml").read_text())) - {"defaults"}
    declared = declared_configs()
    code_mentions = sum(code.count("run.py") for code in render(page).code)
    commands = run_commands(page)
    assert len(commands) == code_mentions, f"{rel(page)}: {code_mentions - len(commands)} run.py commands unparsed"
    wrong = []
    for words in commands:
        multirun = "-m" in words or "--multirun" in words
        for word in words:
            key, eq, value = word.partition("=")
            key = key.lstrip("+~")
            if not eq or word.startswith("-") or "." in key:
                continue   # a flag, a placeholder (...) or a knob (method.lr=...)
            options = config_options(key)
            if options is None:
                if key not in top_level:
                    wrong.append(f"{word}: {key} is neither a config group nor a top-level key")
                continue
            for name in value.split(",") if multirun else [value]:
                if name not in options and f"{key}/{name}" not in declared:
                    wrong.append(f"{word}: no conf/{key}/{name}.yaml (valid: {', '.join(sorted(options))})")
    assert not wrong, f"{rel(page)}:\n  " + "\n  ".join(wrong)
