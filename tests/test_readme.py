"""The README's examples run as written, so they cannot rot: the Python ones in this
process, the JavaScript ones in Node against a real server."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import anyio
import pytest
from pycrdt import Text

from tests.conftest import running_server
from tests.interop.test_yjs_client import INTEROP_DIR, node_executable
from tests.timing import eventually

README = Path(__file__).parent.parent / "README.md"
README_URL = "ws://127.0.0.1:1234"
"""The server address the README's examples use; the tests put a real server's there."""


def test_readme_python_examples_run() -> None:
    """Every ```python block of the README executes without error."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


@pytest.mark.anyio
@pytest.mark.interop
@pytest.mark.timeout(120)
async def test_readme_javascript_examples_run_in_node() -> None:
    """Every ```js block of the README runs in Node against a real server."""
    blocks = re.findall(r"```js\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no JavaScript example"
    for block in blocks:
        await run_javascript_example(block)


async def run_javascript_example(block: str) -> None:
    """Run `block` in Node (with tests/interop's node_modules) against a real server,
    the port its only change: it exits 0, and the server's document `notes/today`
    then holds (in its `body` text) what it printed."""
    node = node_executable()  # fails, saying what to install, without Node or npm packages
    assert README_URL in block, block
    async with running_server() as (app, url):
        port = url.rsplit(":", 1)[1]
        script = block.replace(README_URL, f"ws://127.0.0.1:{port}")
        # Inside tests/interop, so that its imports resolve against its node_modules.
        with tempfile.NamedTemporaryFile(
            "w", dir=INTEROP_DIR, prefix="readme-", suffix=".mjs"
        ) as file:
            file.write(script)
            file.flush()
            with anyio.fail_after(60):
                result = await anyio.run_process(
                    [node, file.name], cwd=INTEROP_DIR, check=False, stderr=subprocess.PIPE
                )
        assert result.returncode == 0, result.stderr.decode()
        printed = result.stdout.decode().strip()
        assert printed, "the example printed nothing"

        async def holds_what_was_printed() -> bool:
            async with app.engine.room("notes/today") as room:
                return str(room.doc.get("body", type=Text)).strip() == printed

        await eventually(holds_what_was_printed, what="the example's text on the server")
