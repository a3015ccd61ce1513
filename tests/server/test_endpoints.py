"""The HTTP API against hostile input, over real connections: deep JSON bodies and
document names that are not what they seem get a 4xx and `{"error": reason}`."""

from __future__ import annotations

import httpx
import pytest

from collab_engine.json_text import MAX_DEPTH
from server.app import App

pytestmark = pytest.mark.anyio

Server = tuple[App, str]

DEEP = '{"a":' + "[" * 30_000 + "]" * 30_000 + "}"
"""A JSON object nested 30,001 deep: 60 KB, inside the 64 KiB body cap."""


def http_base(url: str) -> str:
    return url.replace("ws://", "http://")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/documents/deep/locks"),
        ("POST", "/api/documents/deep/versions"),
        ("PUT", "/api/documents/deep/grants/user:bob"),
        ("PUT", "/api/documents/deep/content"),
    ],
)
async def test_a_deeply_nested_body_is_a_400_with_a_reason(
    server: Server, method: str, path: str
) -> None:
    _, url = server
    assert len(DEEP) < 64 * 1024
    async with httpx.AsyncClient(base_url=http_base(url)) as http:
        reply = await http.request(method, path, content=DEEP)
        assert reply.status_code == 400
        assert reply.json() == {
            "error": f"body is not JSON: JSON nested deeper than {MAX_DEPTH} levels"
        }
        # Just within the limit, the body is read (and judged on its content).
        within = '{"roots": {"t": {"type": "array", "value": ' + "[" * (MAX_DEPTH - 3)
        within += "]" * (MAX_DEPTH - 3) + "}}}"
        reply = await http.put("/api/documents/deep/content", content=within)
        assert reply.status_code == 200, reply.text


async def test_deeply_nested_xml_in_content_is_a_400_and_changes_nothing(server: Server) -> None:
    """An XML root nested 30,000 elements deep (210 KB, inside the import's cap) is
    refused before anything recurses into it; the document is untouched."""
    app, url = server
    deep = "<p>" * 30_000 + "x" + "</p>" * 30_000
    async with httpx.AsyncClient(base_url=http_base(url)) as http:
        reply = await http.put(
            "/api/documents/xml/content", json={"roots": {"pm": {"type": "xml", "xml": deep}}}
        )
        assert reply.status_code == 400
        assert reply.json() == {
            "error": f"root 'pm': the XML is nested deeper than {MAX_DEPTH} elements"
        }
        within = "<p>" * MAX_DEPTH + "x" + "</p>" * MAX_DEPTH
        reply = await http.put(
            "/api/documents/xml/content", json={"roots": {"pm": {"type": "xml", "xml": within}}}
        )
        assert reply.status_code == 200, reply.text
        content = await http.get("/api/documents/xml/versions/now")
        assert content.json()["roots"]["pm"]["xml"] == within


async def test_a_body_that_is_not_json_or_not_an_object_is_a_400(server: Server) -> None:
    _, url = server
    async with httpx.AsyncClient(base_url=http_base(url)) as http:
        for body, reason in [
            (b"{", "body is not JSON: not JSON"),
            (b'{"ttl": NaN}', "body is not JSON: not JSON: NaN is not JSON"),
            (b"\xff", "body is not JSON: not UTF-8"),
            (b"[]", "body must be a JSON object"),
        ]:
            reply = await http.post("/api/documents/d/locks", content=body)
            assert reply.status_code == 400, body
            assert reply.json()["error"].startswith(reason), body


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bin/%FF", "not UTF-8"),
        ("bin/%FE", "not UTF-8"),
        ("nul%00name", "control character U+0000"),
        ("unit%1Fsep", "control character U+001F"),
        ("del%7F", "control character U+007F"),
        ("line%0Abreak", "control character U+000A"),
    ],
)
@pytest.mark.parametrize(
    ("method", "what"),
    [("GET", "presence"), ("GET", "versions"), ("GET", "update"), ("PUT", "grants/user:bob")],
)
async def test_names_that_are_not_clean_utf8_text_are_a_400(
    server: Server, name: str, reason: str, method: str, what: str
) -> None:
    app, url = server
    async with httpx.AsyncClient(base_url=http_base(url)) as http:
        reply = await http.request(method, f"/api/documents/{name}/{what}", json={"role": "editor"})
    assert reply.status_code == 400
    assert reason in reply.json()["error"]
    assert not app.engine.rooms


async def test_the_replacement_character_is_a_name_of_its_own_over_http(server: Server) -> None:
    _, url = server
    async with httpx.AsyncClient(base_url=http_base(url)) as http:
        reply = await http.put(
            "/api/documents/bin/%EF%BF%BD/content",
            json={"roots": {"t": {"type": "text", "text": "x"}}},
        )
        assert reply.status_code == 200 and reply.json()["document"] == "bin/\ufffd"
