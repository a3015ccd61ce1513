"""The documentation (docs/*.md) stays true: its examples run as written, and its
reference tables match the code they describe, so that a flag, a limit or a close code
added without documenting it fails the test command.

- Every ```python block runs in this process, every ```js block in Node against a real
  server; a block in any other language must be one that is not meant to run.
- The flag table of `collab-engine serve` (docs/server.md) lists exactly the flags of the
  parser `server.__main__._parser` builds, each with its default.
- The table of the other commands (docs/server.md) lists exactly the flags of `token`,
  `grants`, `history ...`, `export` and `import`, each with its default.
- The limits table (docs/operations.md) names every limit flag.
- The close-code table (docs/operations.md) names every `CollabError` of the project's
  packages (the tree of `collab_engine.errors`, and any subclass elsewhere) with its
  `close_code`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import collab_engine
import server
import storage
from collab_engine.errors import CollabError
from server.__main__ import _parser
from tests.test_readme import README, run_javascript_example

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", flags=re.S | re.M)
RUN = {"python", "js"}
NOT_RUN = {"text", "console", "json"}
"""Languages of blocks shown but not run: shell lines, payloads (which must parse),
drawings."""


def blocks(language: str) -> list[tuple[str, int, str]]:
    """(page, index on the page, code) of every ```language block of docs/*.md."""
    found = []
    for page in PAGES:
        for index, (lang, code) in enumerate(FENCE.findall(page.read_text())):
            if lang == language:
                found.append((page.name, index, code))
    return found


def example_id(example: tuple[str, int, str]) -> str:
    return f"{example[0]}-{example[1]}"


def test_every_block_either_runs_or_is_not_code() -> None:
    """A ```py or unlabeled block would escape the tests below: every block is labeled
    with a language that runs, or with one that is plainly not a program."""
    assert PAGES, "no docs/*.md"
    for page in PAGES:
        for lang, code in FENCE.findall(page.read_text()):
            assert lang in RUN | NOT_RUN, f"{page.name}: a ```{lang} block:\n{code}"


@pytest.mark.parametrize("example", blocks("python"), ids=example_id)
def test_python_examples_run(example: tuple[str, int, str]) -> None:
    page, _, code = example
    exec(compile(code, str(DOCS / page), "exec"), {"__name__": "docs"})


@pytest.mark.anyio
@pytest.mark.interop
@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", blocks("js"), ids=example_id)
async def test_javascript_examples_run_in_node(example: tuple[str, int, str]) -> None:
    await run_javascript_example(example[2])


@pytest.mark.parametrize("example", blocks("json"), ids=example_id)
def test_json_examples_parse(example: tuple[str, int, str]) -> None:
    json.loads(example[2])


def test_every_page_is_in_the_nav_and_every_readme_link_resolves() -> None:
    nav = set(re.findall(r"^\s*- [^:]+: (\S+\.md)$", MKDOCS.read_text(), flags=re.M))
    assert nav == {page.name for page in PAGES}, "mkdocs.yml's nav and docs/*.md differ"
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert links, "the README links to no documentation page"
    for link in links:
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


def table(page: str, header: str) -> list[list[str]]:
    """The body rows (cells, stripped) of the Markdown table of docs/`page` whose header
    row starts with the cell `header`."""
    lines = (DOCS / page).read_text().splitlines()
    for number, line in enumerate(lines):
        if cells(line)[:1] == [header] and line.startswith("|"):
            rows = []
            for row in lines[number + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            return rows
    raise AssertionError(f"docs/{page} has no table whose header starts with {header!r}")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def flags_in(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text)


def serve_parser() -> argparse.ArgumentParser:
    commands = next(
        action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    parser = commands.choices["serve"]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def serve_options() -> list[argparse.Action]:
    return [
        action for action in serve_parser()._actions if action.option_strings != ["-h", "--help"]
    ]


def documented_default(action: argparse.Action) -> str:
    """A default as the flag table writes it: the first code span of its cell."""
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default is None:
        return "none"
    return str(action.default)


def test_every_serve_flag_is_in_the_flag_table_with_its_default() -> None:
    rows = table("server.md", "flag")
    documented: dict[str, str] = {}
    for flag_cell, default_cell, *_ in rows:
        names = flags_in(flag_cell)
        assert names, f"a row of the flag table names no flag: {flag_cell}"
        spans = re.findall(r"`([^`]*)`", default_cell)
        assert spans, f"{flag_cell}: the default is not in a code span: {default_cell!r}"
        for name in names:
            assert name not in documented, f"{name} is twice in the flag table"
            documented[name] = spans[0]
    parser_flags = set()
    for action in serve_options():
        parser_flags.update(action.option_strings)
        primary = action.option_strings[0]
        assert primary in documented, (
            f"collab-engine serve {primary} is not in docs/server.md's flag table"
        )
        assert documented[primary] == documented_default(action), (
            f"{primary}: docs/server.md says the default is {documented[primary]!r}, "
            f"the parser {documented_default(action)!r}"
        )
    unknown = set(documented) - parser_flags
    assert not unknown, f"docs/server.md documents flags serve does not have: {sorted(unknown)}"


def commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[argparse.Action]]:
    """The options of every leaf command under `parser`, by the command's words
    ("token", "history list", ...)."""
    found: dict[str, list[argparse.Action]] = {}
    options = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands(sub, f"{path} {name}".strip()))
        elif action.option_strings and action.option_strings != ["-h", "--help"]:
            options.append(action)
    if path and not found:
        found[path] = options
    return found


def test_every_flag_of_the_other_commands_is_in_their_table_with_its_default() -> None:
    leaves = {name: options for name, options in commands(_parser()).items() if name != "serve"}
    assert {"token", "grants", "history list", "history restore", "export", "import"} <= set(leaves)
    documented: dict[tuple[str, str], str] = {}
    for command_cell, flag_cell, default_cell, *_ in table("server.md", "command"):
        spans = re.findall(r"`([^`]*)`", default_cell)
        assert spans, f"{flag_cell}: the default is not in a code span: {default_cell!r}"
        names = re.findall(r"`([^`]+)`", command_cell)
        assert names, f"a row names no command: {command_cell!r}"
        for name in names:
            covered = [
                leaf
                for leaf in leaves
                if leaf == name or (name.endswith(" *") and leaf.startswith(name[:-1]))
            ]
            assert covered, f"docs/server.md documents a command that does not exist: {name}"
            for leaf in covered:
                for flag in re.findall(r"`(-[^`]+)`", flag_cell):
                    assert (leaf, flag) not in documented, f"{leaf} {flag} is twice in the table"
                    documented[leaf, flag] = spans[0]
    parsed = set()
    for leaf, options in leaves.items():
        for action in options:
            parsed.update((leaf, flag) for flag in action.option_strings)
            for flag in action.option_strings:
                assert (leaf, flag) in documented, f"collab-engine {leaf} {flag} is not documented"
                assert documented[leaf, flag] == documented_default(action), (
                    f"{leaf} {flag}: docs/server.md says the default is "
                    f"{documented[leaf, flag]!r}, the parser {documented_default(action)!r}"
                )
    unknown = set(documented) - parsed
    assert not unknown, f"docs/server.md documents flags that do not exist: {sorted(unknown)}"


LIMIT = re.compile(r"^--(max-|lock-max-|locks-per-)|-(size|rate|burst)$")
"""A limit flag, by its name; a flag whose help says what it closes is one too."""


def test_every_limit_flag_is_in_the_limits_table() -> None:
    rows = table("operations.md", "limit / error")
    documented = {flag for row in rows for flag in flags_in(row[0])}
    limits = {
        action.option_strings[0]
        for action in serve_options()
        if LIMIT.search(action.option_strings[0]) or "close" in (action.help or "")
    }
    assert "--max-frame-size" in limits and "--outbox-size" in limits
    missing = limits - documented
    assert not missing, f"limit flags missing from docs/operations.md's limits: {sorted(missing)}"
    flags = {flag for action in serve_options() for flag in action.option_strings}
    unknown = documented - flags
    assert not unknown, f"docs/operations.md's limits name unknown flags: {sorted(unknown)}"


def errors() -> list[type[CollabError]]:
    """CollabError and every subclass of it in the project's packages."""
    for package in (collab_engine, server, storage):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    found: list[type[CollabError]] = []
    todo: list[type[CollabError]] = [CollabError]
    while todo:
        error = todo.pop()
        found.append(error)
        todo.extend(error.__subclasses__())
    return found


def test_every_error_is_in_the_close_code_table_with_its_code() -> None:
    rows = table("operations.md", "code")
    documented: dict[str, str] = {}
    for code, error, *_ in rows:
        names = re.findall(r"`(\w+)`", error)
        assert len(names) == 1, f"a close-code row names no error (or several): {error}"
        documented[names[0]] = code
    tree = {
        error.__name__: error
        for error in errors()
        if error.__module__.split(".")[0] in ("collab_engine", "server", "storage")
    }
    for name, error in tree.items():
        assert name in documented, f"{name} ({error.close_code}) is not in the close-code table"
        assert documented[name] == str(error.close_code), (
            f"{name}: the table says {documented[name]}, errors.py {error.close_code}"
        )
    unknown = set(documented) - set(tree)
    assert not unknown, f"the close-code table names unknown errors: {sorted(unknown)}"
