"""Interop of version history: a y-prosemirror-shaped document written by the real npm
`yjs` + `y-websocket` client, in Node, named as a version over HTTP, edited a lot,
then restored over HTTP, arrives intact in a fresh Node client.

The document is what y-prosemirror makes of a ProseMirror document: a root
`Y.XmlFragment` "prosemirror" of `Y.XmlElement` nodes (paragraph, heading with the
number attribute `level`, bullet_list > list_item > paragraph, ...) holding `Y.XmlText`
whose marks are formatting attributes ({bold: true}, {strong: {}} as y-prosemirror
stores a mark without attributes, {link: {href, title}}), with non-ASCII text.
`client.mjs` edits it with its ops `xmlEdit` (one transaction per call, as
y-prosemirror applies an editor transaction) and dumps it with `xmlDump`: the
fragment's `toString()` and a tree of node names, attributes and, for each XmlText,
its `toDelta()` with the formatting.

The server's own view (the "xml" of `GET .../versions/<id>`, `content.xml_of`) renders
as Yjs's `toString()` does (element names lowercased, attributes sorted, marks as
tags nested in name order) but escapes `&`, `<`, `>` and `"`, which Yjs leaves raw:
unescaped, it must equal the Node side's string exactly (`as_yjs`).

Node >= 20 and `npm ci --prefix tests/interop` are required: without them this test
fails (it is not skipped), like the other interop tests.
"""

from __future__ import annotations

import html
from typing import Any

import anyio
import httpx
import pytest

from collab_engine import protocol
from collab_engine.types import DocumentName
from server.app import App
from tests.conftest import running_server
from tests.interop.test_yjs_client import NodeClient, node_client, node_executable, wait_server

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.timeout(60)]

ROOM = "interop/history/prosemirror-é"
ROOT = "prosemirror"
LINK = {"href": "https://example.com/café?q=1&r=日本", "title": None}


def text(*runs: tuple[str, dict[str, Any]] | str) -> dict[str, Any]:
    """An XmlText spec from runs: "plain", or ("formatted", {mark: value})."""
    delta = [
        {"insert": r} if isinstance(r, str) else {"insert": r[0], "attributes": r[1]} for r in runs
    ]
    return {"text": delta}


def element(name: str, *children: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    return {"name": name, "attrs": attrs, "children": list(children)}


# The document as y-prosemirror would store it (version 1).
VERSION_1 = [
    element(
        "heading", text(("Résumé", {"strong": {}}), " 😀 — 日本語の見出し"), level=1, id="résumé"
    ),
    element(
        "paragraph",
        text(
            "Hello ",
            ("bold", {"bold": True}),
            " and ",
            ("italic", {"italic": True}),
            ", ",
            ("both", {"bold": True, "italic": True}),
            " and ",
            ("a link é", {"link": LINK}),
            ".",
        ),
    ),
    element(
        "bullet_list",
        element("list_item", element("paragraph", text("café ☕ crème brûlée"))),
        element(
            "list_item",
            element(
                "paragraph",
                text(
                    "中文, 한국어 and ",
                    ("😀🎉 emoji", {"em": {}}),
                    " then ",
                    ("strong", {"strong": {}}),
                ),
            ),
        ),
    ),
    element("paragraph"),  # an empty paragraph: an element with no child
    element("code_block", text("print('naïve')\nx = 1"), language="python"),
    element(
        "paragraph",
        text(("日本語テキスト", {"em": {}, "strong": {}}), " ∑ end"),
        textAlign="center",
        indent=0,
        dir="ltr",
    ),
]

# Version 1 as Yjs prints it (`toString()`): element names lowercased, attributes and
# marks sorted, a mark's attributes as the tag's, no escaping (the `&` of the href).
VERSION_1_XML = (
    '<heading id="résumé" level="1"><strong>Résumé</strong> 😀 — 日本語の見出し</heading>'
    "<paragraph>Hello <bold>bold</bold> and <italic>italic</italic>, "
    "<bold><italic>both</italic></bold> and "
    '<link href="https://example.com/café?q=1&r=日本" title="null">a link é</link>.</paragraph>'
    "<bullet_list><list_item><paragraph>café ☕ crème brûlée</paragraph></list_item>"
    "<list_item><paragraph>中文, 한국어 and <em>😀🎉 emoji</em> then "
    "<strong>strong</strong></paragraph></list_item></bullet_list>"
    "<paragraph></paragraph>"
    "<code_block language=\"python\">print('naïve')\nx = 1</code_block>"
    '<paragraph dir="ltr" indent="0" textAlign="center">'
    "<em><strong>日本語テキスト</strong></em> ∑ end</paragraph>"
)

# Substantial later edits, one y-prosemirror-like transaction each (indexes are the
# fragment's children as each edit finds them; XmlText indexes are UTF-16 units).
LATER_EDITS = [
    # Delete the first paragraph (and the empty one, further down).
    [{"do": "delete", "path": [], "index": 1}, {"do": "delete", "path": [], "index": 2}],
    # Change text and formatting: the heading, the first list item.
    [
        {
            "do": "insertText",
            "path": [0, 0],
            "index": 6,
            "text": " (révisé ✍️)",
            "attributes": {"italic": True},
        },
        {
            "do": "format",
            "path": [0, 0],
            "index": 0,
            "length": 6,
            "attributes": {"strong": None, "bold": True},
        },
        {"do": "deleteText", "path": [1, 0, 0, 0], "index": 0, "length": 7},
        {
            "do": "insertText",
            "path": [1, 0, 0, 0],
            "index": 0,
            "text": "thé 🍵 ",
            "attributes": {"link": {"href": "https://example.org/", "title": "t"}},
        },
        {
            "do": "format",
            "path": [1, 1, 0, 0],
            "index": 0,
            "length": 4,
            "attributes": {"bold": True},
        },
    ],
    # A new heading at the top.
    [
        {
            "do": "insert",
            "path": [],
            "index": 0,
            "nodes": [element("heading", text("Nouveau titre 🚀 新しい"), level=2)],
        }
    ],
    # Reorder: move the last paragraph to the top (delete, then insert a copy).
    [
        {"do": "delete", "path": [], "index": 4},
        {
            "do": "insert",
            "path": [],
            "index": 0,
            "nodes": [
                element(
                    "paragraph",
                    text(("日本語テキスト", {"em": {}, "strong": {}}), " ∑ end"),
                    textAlign="center",
                )
            ],
        },
    ],
    # Attributes: the old heading's level, the code block's language, a new one.
    [
        {"do": "setAttribute", "path": [2], "name": "level", "value": 3},
        {"do": "removeAttribute", "path": [4], "name": "language"},
        {"do": "setAttribute", "path": [0], "name": "textAlign", "value": "right"},
        {"do": "setAttribute", "path": [3], "name": "data-note", "value": "ünïcode"},
    ],
    # And a list item more.
    [
        {
            "do": "insert",
            "path": [3],
            "index": 2,
            "nodes": [element("list_item", element("paragraph", text("третий пункт")))],
        }
    ],
]


def as_yjs(xml: str) -> str:
    """The server's XML as Yjs renders it: the same, but nothing escaped."""
    return html.unescape(xml)


def api(url: str) -> httpx.AsyncClient:
    # Open mode (no secret): every request is the owner.
    return httpx.AsyncClient(
        base_url=url.replace("ws://", "http://") + "/api/documents", timeout=10
    )


def path(room: str, *rest: str | int) -> str:
    return "/".join([room, "versions", *map(str, rest)])


async def dump(node: NodeClient) -> dict[str, Any]:
    return (await node.request("xmlDump", root=ROOT))["dumps"][0]  # type: ignore[no-any-return]


async def until_server_has(app: App, room: str, node: NodeClient) -> None:
    """Wait until the server has applied everything `node` has (same state vector)."""
    state = {int(client): clock for client, clock in (await dump(node))["stateVector"].items()}
    doc = app.engine.rooms[DocumentName(room)].doc
    await wait_server(
        app, room, lambda: protocol.decode_state_vector(doc.get_state()) == state, timeout=10
    )


async def test_prosemirror_document_restored_arrives_intact_in_a_fresh_client() -> None:
    node_executable()  # fail here, clearly, without Node or node_modules
    with anyio.fail_after(40):
        async with running_server() as (app, url), api(url) as http:
            async with node_client(url, ROOM, label="a") as a:
                # Version 1, written by the npm client.
                await a.request(
                    "xmlEdit",
                    root=ROOT,
                    edits=[{"do": "insert", "path": [], "index": 0, "nodes": VERSION_1}],
                )
                before = await dump(a)
                await until_server_has(app, ROOM, a)
                created = await http.post(path(ROOM), json={"label": "v1 ✓"})
                assert created.status_code == 200, created.text
                version_id = created.json()["version"]["id"]
                at_version = await http.get(path(ROOM, version_id))
                assert at_version.status_code == 200, at_version.text
                server_v1 = at_version.json()["roots"][ROOT]
                assert server_v1["type"] == "xml"

                # Version 1 as Yjs has it (a check of the specs above), and as the server has it.
                assert before["xml"] == VERSION_1_XML
                assert before["tree"]["children"][0] == {
                    "name": "heading",
                    "attrs": {"level": 1, "id": "résumé"},
                    "children": [
                        {
                            "text": [
                                {"insert": "Résumé", "attributes": {"strong": {}}},
                                {"insert": " 😀 — 日本語の見出し"},
                            ]
                        }
                    ],
                }
                assert as_yjs(server_v1["xml"]) == before["xml"]

                # Substantial later edits.
                for edits in LATER_EDITS:
                    await a.request("xmlEdit", root=ROOT, edits=edits)
                edited = await dump(a)
                assert edited["xml"] != before["xml"]
                await until_server_has(app, ROOM, a)
                now = await http.get(path(ROOM, "now"))
                assert as_yjs(now.json()["roots"][ROOT]["xml"]) == edited["xml"]

                # Restore version 1 while A is connected.
                restored = await http.post(path(ROOM, version_id, "restore"))
                assert restored.status_code == 200, restored.text
                assert restored.json()["version"]["label"].startswith(
                    f"Restored version {version_id}"
                )

                # A fresh client: a new Y.Doc and provider, synced from the server.
                async with node_client(url, ROOM, label="b") as b:
                    fresh = await dump(b)
                    assert fresh["xml"] == before["xml"]
                    assert fresh["tree"] == before["tree"]
                    # The restore is a new change on top of the history (made by a
                    # client id of the server's), not a reset of the document.
                    assert set(fresh["stateVector"]) - {str(a.client_id)}
                    assert (
                        fresh["stateVector"][str(a.client_id)]
                        == edited["stateVector"][str(a.client_id)]
                    )

                # A, connected during the restore, converges to the same content.
                await a.request(
                    "wait",
                    until={
                        "xmlMatches": {"root": ROOT, "xml": before["xml"], "tree": before["tree"]}
                    },
                    within=10,
                )
                after_a = await dump(a)
                assert after_a["xml"] == before["xml"]
                assert after_a["tree"] == before["tree"]

                # The server's view: content now is content at version 1, which the
                # restore left as it was.
                now = await http.get(path(ROOM, "now"))
                assert as_yjs(now.json()["roots"][ROOT]["xml"]) == before["xml"]
                again = await http.get(path(ROOM, version_id))
                assert again.json()["roots"][ROOT]["xml"] == server_v1["xml"]
