"""Presence: the room's awareness under the server's policy.

Editors keep presence in standard Yjs awareness states, in the fields the bindings
already use; the server reads and enforces these:

    {
      "user":   {"id": "...", "name": "...", "color": "#30bced"},   # id stamped by us
      "cursor": {"anchor": RelativePosition, "head": RelativePosition},
      "status": "online" | "away" | "busy" | "offline",            # absent = online
      "statusText": "in a meeting",                                 # optional
      "typing": true | false
    }

`cursor` is what y-codemirror.next and y-prosemirror write: two Yjs relative
positions as JSON (`{"type", "tname", "item": {"client", "clock"}, "assoc"}`).

The policy, applied to every state a connection sends:
- **Identity.** `user.id` is the connection's identity; for an authenticated one,
  `user.name` too. A state saying otherwise is corrected before anyone sees it. An
  anonymous connection keeps the display name it chose, with `user.anonymous: true`.
- **Ownership.** A connection sets and removes only the client ids it holds; an entry
  for another connection's id is refused (the sender is told, with the y-protocols
  permission-denied message), unless both are the same authenticated user.
- **Rate, with coalescing.** A connection may send `burst` awareness messages at
  once and `rate` per second after that; beyond, its states are still recorded (the
  latest wins) and go out at the next flush, so nothing queues without bound.
- **Typing** is cleared by the server once the connection has done nothing for
  `typing_timeout` seconds (no edit, no change of state).
- **Idle.** A connection silent for `idle_timeout` seconds is shown `away` (if it
  said `online` or nothing) while it stays connected; its next edit or change of
  state restores what it said. Renewing an unchanged state is not activity.
- **Read-only connections** are shown, or hidden from the other clients, as
  configured.

A state the server changed goes out at clock + 1 to everyone, its owner included,
which then adopts it (y-protocols takes a newer copy of its own state): identity,
idle and typing corrections reach the client itself, and its next states carry them.

The server has an awareness entry of its own, `{"server": {"name", "document", ...}}`
(no `user`, so editors draw no cursor for it), present **only while it has something
to say** (the room's locks): frontends that count `awareness.getStates()` to show who
is online count people, not the server. It appears when the first thing to say
does, is removed (a null state, for everyone) when the last goes, is renewed before
clients would time it out, and changes at most once per `server_interval`: a
change within it waits, the latest wins, and `tick` sends it when the interval is
over.

Pure: time comes in as `now` (monotonic seconds), nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, StickyIndex, Text

from . import json_text
from .awareness import SERVER_OWNER, Awareness
from .blocks import client_blocks
from .errors import ProtocolError
from .identity import Identity
from .protocol import AwarenessEntry, decode_state_vector, encode_state_vector
from .types import ClientId, PeerId

STATUSES = ("online", "away", "busy", "offline")
SERVER = SERVER_OWNER


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """The presence limits and timings of a room."""

    rate: float = 20.0
    """Awareness messages per second a connection may send, sustained."""
    burst: int = 10
    """Awareness messages a connection may send at once."""
    typing_timeout: float = 5.0
    """Seconds without activity after which `typing` is cleared."""
    idle_timeout: float = 60.0
    """Seconds without activity after which a connection is shown `away`."""
    show_read_only: bool = True
    """Whether read-only connections' presence is shown to the others."""
    server_renew: float = 15.0
    """Seconds between renewals of the server's own entry (clients drop it after 30)."""
    server_interval: float = 0.25
    """The least seconds between two changes of the server's own entry sent to the
    clients (`--lock-mirror-interval`): however often the locks change, each client
    receives the entry at most this often."""


@dataclass(slots=True)
class _Connection:
    identity: Identity
    read_only: bool
    tokens: float
    refilled_at: float
    last_activity: float
    idle: bool = False
    pending: dict[ClientId, None] = field(default_factory=dict)
    """Client ids whose latest entry waits for the next flush (rate limit)."""


@dataclass(slots=True)
class _Client:
    owner: PeerId
    current: dict[str, Any]
    declared_status: str | None = None
    """The status the client itself last chose (None: none, which means online)."""
    auto_away: bool = False
    """The state shows `away` because the server found the connection idle."""


@dataclass(slots=True)
class Outcome:
    """What to send after a connection's awareness message."""

    to_others: list[AwarenessEntry] = field(default_factory=list)
    """Entries as the sender sent them: for every peer but the sender."""
    to_all: list[AwarenessEntry] = field(default_factory=list)
    """Entries the server changed (clock + 1): for everyone, the sender included."""
    refused: list[ClientId] = field(default_factory=list)
    """Client ids the sender may not set: another connection holds them."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """A cursor resolved in the current document: indexes in UTF-16 code units, as
    Yjs counts them (None where the position cannot be resolved)."""

    anchor: int | None
    head: int | None
    type: str | None
    """The root type the cursor is in, when it is a root (a Text's name)."""


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """One client's presence, for programs (the HTTP API, the embedding API)."""

    client_id: int | None
    """The awareness client id, or None for a connection that has set no state."""
    user_id: str
    name: str | None
    color: str | None
    anonymous: bool
    status: str
    status_text: str | None
    typing: bool
    idle: bool
    read_only: bool
    inactive_for: float
    """Seconds since the connection's last edit or change of state."""
    cursor: Cursor | None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the HTTP API."""
        return {
            "clientId": self.client_id,
            "user": {
                "id": self.user_id,
                "name": self.name,
                "color": self.color,
                "anonymous": self.anonymous,
            },
            "status": self.status,
            "statusText": self.status_text,
            "typing": self.typing,
            "idle": self.idle,
            "readOnly": self.read_only,
            "inactiveFor": round(self.inactive_for, 3),
            "cursor": None
            if self.cursor is None
            else {"anchor": self.cursor.anchor, "head": self.cursor.head, "type": self.cursor.type},
        }


class Presence:
    """The presence of one room: its awareness table, under `policy`.

    Args:
        awareness: the room's awareness table.
        policy: limits and timings.
        server_state: the content of the server's own entry (under `"server"`).
        now: the time the room opens.
    """

    def __init__(
        self,
        awareness: Awareness,
        policy: PresencePolicy,
        *,
        server_state: dict[str, Any],
        now: float,
    ) -> None:
        self.awareness = awareness
        self.policy = policy
        self._connections: dict[PeerId, _Connection] = {}
        self._clients: dict[ClientId, _Client] = {}
        self.server_client_id = ClientId(random.getrandbits(32))
        self._server_state = server_state
        self._server_says: dict[str, Any] = {}
        """What the server's entry says beyond `server_state`; empty: no entry."""
        self._server_sent = -math.inf
        """When the server's entry last went out (changed, renewed or removed)."""
        self._server_due = False
        """A change of the server's entry waits for `server_interval` to pass."""
        self._horizon = min(policy.typing_timeout, policy.idle_timeout)
        self._scan_at = now + self._horizon
        """No idle or typing timer can fire before this: `tick` skips the scan."""
        self._waiting: set[PeerId] = set()
        """Connections with entries held back by the rate limit."""
        self.awareness.reserve(self.server_client_id, SERVER, now)

    # -- connections -------------------------------------------------------------------

    def connect(self, peer: PeerId, identity: Identity, read_only: bool, now: float) -> None:
        """Register a connection before it sends anything."""
        self._connections[peer] = _Connection(
            identity, read_only, float(self.policy.burst), now, now
        )
        self._scan_at = min(self._scan_at, now + self._horizon)

    def set_read_only(self, peer: PeerId, read_only: bool) -> list[AwarenessEntry]:
        """A connection's rights changed; return what the others must now see (its
        states appearing or going away, where read-only presence is hidden)."""
        connection = self._connections.get(peer)
        if connection is None or connection.read_only == read_only:
            return []
        was_hidden = self._hidden(connection)
        connection.read_only = read_only
        if was_hidden == self._hidden(connection):
            return []
        owned = [cid for cid, client in self._clients.items() if client.owner == peer]
        entries = [entry for cid in owned if (entry := self.awareness.get(cid)) is not None]
        if not was_hidden:
            return [AwarenessEntry(e.client_id, e.clock, None) for e in entries]
        return entries

    def disconnect(self, peer: PeerId) -> list[AwarenessEntry]:
        """Forget a connection; return the removals of its states, for the others."""
        connection = self._connections.pop(peer, None)
        self._waiting.discard(peer)
        removed = self.awareness.remove_owner(peer)
        for entry in removed:
            self._clients.pop(entry.client_id, None)
        if connection is not None and self._hidden(connection):
            return []
        return removed

    def visible_entries(self) -> list[AwarenessEntry]:
        """Every present state the other clients may see (what a joiner is sent)."""
        return [entry for entry in self.awareness.entries() if self._visible(entry.client_id)]

    # -- a connection's messages -------------------------------------------------------

    def receive(self, peer: PeerId, entries: tuple[AwarenessEntry, ...], now: float) -> Outcome:
        """Apply a connection's awareness message under the policy.

        Raises:
            MessageTooBig: a state is over the size limit; nothing is applied.
            KeyError: `peer` was not connected.
        """
        connection = self._connections[peer]
        applied = self.awareness.apply(
            entries, peer, now, may_take_over=lambda holder: self._same_user(holder, peer)
        )
        outcome = Outcome(refused=[entry.client_id for entry in applied.refused])
        incoming: list[tuple[AwarenessEntry, dict[str, Any] | None]] = []
        active = False
        for entry in applied.accepted:
            state = None if entry.state is None else (entry.value or _parse(entry.state))
            client = self._clients.get(entry.client_id)
            if state is not None and (client is None or client.current != state):
                active = True
            incoming.append((entry, state))
        if active:
            # The message's own states get the policy below; restore the others.
            mine = {entry.client_id for entry, _ in incoming}
            outcome.to_all.extend(self._active(peer, connection, now, skip=mine))
        for entry, state in incoming:
            if state is None:
                self._clients.pop(entry.client_id, None)
                outcome.to_others.append(entry)
                continue
            client = self._clients.get(entry.client_id)
            if client is None or client.owner != peer:
                client = self._clients[entry.client_id] = _Client(peer, state)
            wanted = self._policy(connection, client, state, now)
            client.current = wanted
            if wanted == state:
                outcome.to_others.append(entry)
            else:
                outcome.to_all.append(self._put(entry.client_id, wanted, now))
        if self._hidden(connection):
            outcome.to_others.clear()
            outcome.to_all.clear()
        elif outcome.to_others or outcome.to_all:
            if self._take_token(connection, now):
                # Going out now, newest: nothing older is left to flush for these ids.
                for entry in (*outcome.to_others, *outcome.to_all):
                    connection.pending.pop(entry.client_id, None)
            else:
                # Over the rate: keep the latest (already in the table), send it later.
                for entry in (*outcome.to_others, *outcome.to_all):
                    connection.pending[entry.client_id] = None
                self._waiting.add(peer)
                outcome.to_others.clear()
                outcome.to_all.clear()
        return outcome

    def activity(self, peer: PeerId, now: float) -> list[AwarenessEntry]:
        """The connection edited the document; return what changes (idle ended)."""
        connection = self._connections.get(peer)
        if connection is None:
            return []
        changed = self._active(peer, connection, now)
        return [] if self._hidden(connection) else changed

    @property
    def holding(self) -> bool:
        """Whether the rate limit holds back states, or a change of the server's entry
        waits: `tick` soon sends them."""
        return bool(self._waiting) or self._server_due

    def tick(self, now: float) -> list[AwarenessEntry]:
        """Time passes: flush coalesced states, clear expired typing, mark idle
        connections away, renew the server's entry. Returns entries for everyone.

        Cheap when nothing is due: it runs at every visit of every room (a few
        times a second), more often in rooms holding states back, so the connections
        are scanned for idle and typing timers only once the earliest of them can have
        fired, and only connections holding back entries are visited for those."""
        out: list[AwarenessEntry] = []
        if now >= self._scan_at:
            out.extend(self._scan(now))
        if self._waiting:
            sent = {entry.client_id for entry in out}
            for peer in list(self._waiting):
                connection = self._connections[peer]
                if not self._take_token(connection, now):
                    continue
                if not self._hidden(connection):
                    for cid in connection.pending:
                        entry = self.awareness.get(cid)
                        clock = self.awareness.clock_of(cid)
                        if entry is None and clock is not None:
                            entry = AwarenessEntry(cid, clock, None)
                        if entry is not None and cid not in sent:
                            out.append(entry)
                connection.pending.clear()
                self._waiting.discard(peer)
        if self._server_due and now - self._server_sent >= self.policy.server_interval:
            out.extend(self._send_server(now))
        elif self._server_says and now - self._server_sent >= self.policy.server_renew:
            out.extend(self._send_server(now))
        return out

    def _scan(self, now: float) -> list[AwarenessEntry]:
        # Idle and typing timers, in one pass over the clients and the connections;
        # then when the next of them is due.
        out: list[AwarenessEntry] = []
        owned_by: dict[PeerId, list[ClientId]] = {}
        for cid, client in self._clients.items():
            owned_by.setdefault(client.owner, []).append(cid)
        policy = self.policy
        next_at = math.inf
        for peer, connection in self._connections.items():
            changed: list[AwarenessEntry] = []
            silent = now - connection.last_activity
            owned = owned_by.get(peer, [])
            if not connection.idle:
                if silent >= policy.idle_timeout:
                    connection.idle = True
                    for cid in owned:
                        client = self._clients[cid]
                        if client.current.get("status", "online") == "online":
                            client.auto_away = True
                            changed.append(
                                self._put(cid, {**client.current, "status": "away"}, now)
                            )
                else:
                    next_at = min(next_at, connection.last_activity + policy.idle_timeout)
            for cid in owned:
                client = self._clients[cid]
                if client.current.get("typing") is True:
                    if silent >= policy.typing_timeout:
                        changed.append(self._put(cid, {**client.current, "typing": False}, now))
                    else:
                        next_at = min(next_at, connection.last_activity + policy.typing_timeout)
            if not self._hidden(connection):
                out.extend(changed)
        self._scan_at = next_at
        return out

    def expire(self, now: float) -> list[AwarenessEntry]:
        """Remove states not renewed in time; return the removals the others saw."""
        removed = []
        for entry in self.awareness.expire(now):
            client = self._clients.pop(entry.client_id, None)
            connection = None if client is None else self._connections.get(client.owner)
            if connection is None or not self._hidden(connection):
                removed.append(entry)
        return removed

    # -- the server's own entry --------------------------------------------------------

    @property
    def server_state(self) -> dict[str, Any]:
        """What the server's entry says, when present (a copy)."""
        return {**self._server_state, **self._server_says}

    def server_says(self, fields: dict[str, Any], now: float) -> list[AwarenessEntry]:
        """Set what the server's entry says beyond its name: `fields` with empty
        values left out, and nothing at all removes the entry. Returns the entries
        for everyone now: none when nothing changed, or when the entry changed less
        than `server_interval` ago (the change is then held, and `tick` sends the
        latest once the interval is over)."""
        says = {key: value for key, value in fields.items() if value}
        if says == self._server_says:
            return []
        self._server_says = says
        if now - self._server_sent < self.policy.server_interval:
            self._server_due = True
            return []
        return self._send_server(now)

    def _send_server(self, now: float) -> list[AwarenessEntry]:
        self._server_due = False
        self._server_sent = now
        cid = self.server_client_id
        if self._server_says:
            text = json.dumps({"server": self.server_state}, separators=(",", ":"))
            return [self.awareness.add_own(cid, text, SERVER, now)]
        removed = self.awareness.remove_own(cid, now)
        return [] if removed is None else [removed]

    # -- for programs ------------------------------------------------------------------

    def describe(self, doc: Doc[Any], now: float) -> list[PresenceInfo]:
        """Who is connected, with status, activity and cursors resolved in `doc`."""
        infos = []
        with_state = set()
        for cid, client in self._clients.items():
            connection = self._connections.get(client.owner)
            if connection is None:
                continue
            with_state.add(client.owner)
            state = client.current
            user = state.get("user") if isinstance(state.get("user"), dict) else {}
            assert isinstance(user, dict)
            infos.append(
                PresenceInfo(
                    client_id=cid,
                    user_id=connection.identity.user_id,
                    name=_text(user.get("name")),
                    color=_text(user.get("color")),
                    anonymous=connection.identity.anonymous,
                    status=state.get("status", "online"),
                    status_text=_text(state.get("statusText")),
                    typing=state.get("typing") is True,
                    idle=connection.idle,
                    read_only=connection.read_only,
                    inactive_for=now - connection.last_activity,
                    cursor=resolve_cursor(doc, state.get("cursor")),
                )
            )
        for peer, connection in self._connections.items():
            if peer in with_state:
                continue
            identity = connection.identity
            infos.append(
                PresenceInfo(
                    client_id=None,
                    user_id=identity.user_id,
                    name=None if identity.anonymous else identity.name,
                    color=None,
                    anonymous=identity.anonymous,
                    status="away" if connection.idle else "online",
                    status_text=None,
                    typing=False,
                    idle=connection.idle,
                    read_only=connection.read_only,
                    inactive_for=now - connection.last_activity,
                    cursor=None,
                )
            )
        return infos

    # -- the policy --------------------------------------------------------------------

    def _policy(
        self, connection: _Connection, client: _Client, state: dict[str, Any], now: float
    ) -> dict[str, Any]:
        wanted = dict(state)
        identity = connection.identity
        user = dict(state["user"]) if isinstance(state.get("user"), dict) else {}
        user["id"] = identity.user_id
        if identity.anonymous:
            user["anonymous"] = True
        else:
            user["name"] = identity.name
            user.pop("anonymous", None)
        wanted["user"] = user
        status = state.get("status")
        if status not in STATUSES:
            status = None
        if client.auto_away and status == "away":
            status = client.declared_status  # our own `away`, echoed by the client
        else:
            client.declared_status = status
        client.auto_away = False
        if connection.idle and status in (None, "online"):
            status = "away"
            client.auto_away = True
        if status is None:
            wanted.pop("status", None)
        else:
            wanted["status"] = status
        if "statusText" in wanted and not isinstance(wanted["statusText"], str):
            del wanted["statusText"]
        if "typing" in wanted and not isinstance(wanted["typing"], bool):
            del wanted["typing"]
        if (
            wanted.get("typing") is True
            and now - connection.last_activity >= self.policy.typing_timeout
        ):
            wanted["typing"] = False
        return wanted

    def _active(
        self,
        peer: PeerId,
        connection: _Connection,
        now: float,
        skip: set[ClientId] | frozenset[ClientId] = frozenset(),
    ) -> list[AwarenessEntry]:
        connection.last_activity = now
        self._scan_at = min(self._scan_at, now + self._horizon)
        if not connection.idle:
            return []
        connection.idle = False
        restored = []
        for cid, client in self._clients.items():
            if client.owner == peer and client.auto_away and cid not in skip:
                client.auto_away = False
                state = dict(client.current)
                if client.declared_status is None:
                    state.pop("status", None)
                else:
                    state["status"] = client.declared_status
                restored.append(self._put(cid, state, now))
        return restored

    def _put(self, client_id: ClientId, state: dict[str, Any], now: float) -> AwarenessEntry:
        self._clients[client_id].current = state
        return self.awareness.put(client_id, json.dumps(state, separators=(",", ":")), now)

    def _take_token(self, connection: _Connection, now: float) -> bool:
        elapsed = now - connection.refilled_at
        connection.refilled_at = now
        connection.tokens = min(
            float(self.policy.burst), connection.tokens + elapsed * self.policy.rate
        )
        if connection.tokens >= 1.0:
            connection.tokens -= 1.0
            return True
        return False

    def _same_user(self, holder: PeerId, peer: PeerId) -> bool:
        a, b = self._connections.get(holder), self._connections.get(peer)
        return (
            a is not None
            and b is not None
            and not a.identity.anonymous
            and a.identity.user_id == b.identity.user_id
        )

    def _hidden(self, connection: _Connection) -> bool:
        return connection.read_only and not self.policy.show_read_only

    def _visible(self, client_id: ClientId) -> bool:
        client = self._clients.get(client_id)
        if client is None:
            return True  # the server's own entry
        connection = self._connections.get(client.owner)
        return connection is None or not self._hidden(connection)


def _parse(text: str) -> dict[str, Any]:
    # The codec accepted `text` (an object, nested at most json_text.MAX_DEPTH deep):
    # reading it again this way cannot fail, nor recurse deeply.
    value = json_text.parse(text)
    assert isinstance(value, dict)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def resolve_cursor(doc: Doc[Any], cursor: Any) -> Cursor | None:
    """Resolve a `{"anchor", "head"}` pair of Yjs relative positions in `doc`."""
    if not isinstance(cursor, dict):
        return None
    anchor, head = cursor.get("anchor"), cursor.get("head")
    if not isinstance(anchor, dict) or not isinstance(head, dict):
        return None
    name = anchor.get("tname") if isinstance(anchor.get("tname"), str) else None
    return Cursor(resolve_position(doc, anchor), resolve_position(doc, head), name)


def resolve_position(doc: Doc[Any], position: dict[str, Any]) -> int | None:
    """The index a Yjs relative position (as JSON) points at now, in UTF-16 code units
    as Yjs counts them; None when it cannot be resolved (an unknown item, a position
    inside a nested type rather than a root Text)."""
    assoc = position.get("assoc", 0)
    name = position.get("tname")
    if not isinstance(assoc, int) or not isinstance(name, str):
        return None
    text = doc.get(name, type=Text)
    item = position.get("item")
    if item is None:
        # No item: the start (assoc < 0) or the end of the type, as Yjs reads it.
        return 0 if assoc < 0 else _utf16_length(str(text))
    if not isinstance(item, dict):
        return None
    client, clock = item.get("client"), item.get("clock")
    if not isinstance(client, int) or not isinstance(clock, int) or clock < 0:
        return None
    try:
        known = decode_state_vector(doc.get_state())
    except ProtocolError:
        return None
    if clock >= known.get(client, 0):
        return None  # an item this document does not have (Yrs would panic on it)
    # The client's blocks: an update holding only its items (we "know" the others).
    others = {c: k for c, k in known.items() if c != client}
    try:
        blocks = client_blocks(doc.get_update(encode_state_vector({**others, client: 0})), client)
    except (ProtocolError, ValueError):
        return None
    block = blocks.block_of(clock)
    if block is None:
        return None
    start = block[0]
    # Yrs's sticky offsets mix units (UTF-8 bytes for the items before, clock units
    # inside the item), so only the offset of the block's first clock is used: the
    # bytes before the block, exactly. From there on, it is Yjs's rule.
    sticky = StickyIndex.from_json({"item": {"client": client, "clock": start}, "assoc": 0})
    try:
        with doc.transaction() as txn:
            before = sticky.get_index(txn)
        prefix = str(text).encode()[:before].decode()
    except Exception:  # noqa: BLE001 - an unresolvable position is reported as None
        return None
    index = _utf16_length(prefix)
    if not blocks.is_deleted(clock):
        index += clock - start + (1 if assoc < 0 else 0)
    return index


def _utf16_length(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2
