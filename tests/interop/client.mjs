#!/usr/bin/env node
// A scriptable y-websocket client: the real npm `yjs` + `y-websocket` in Node, driven
// by the interop tests (test_yjs_client.py) through JSON lines.
//
//   node client.mjs --url ws://127.0.0.1:PORT --room NAME [--clients N] [--label L]
//                   [--defer-connect] [--lifetime SECONDS] [--token TOKEN]
//
// With --token, every provider sends it as y-websocket's `params: {token}` (the query
// string `?token=...` of each connection and reconnection).
//
// It opens N providers (one Y.Doc each, BroadcastChannel disabled so that everything
// goes through the server) on ws://.../NAME, then reads one JSON command per line on
// stdin and writes JSON lines on stdout:
//
//   {"event": "hello", "label": L, "clients": [{"client": 0, "clientID": 123}, ...]}
//   {"event": "status" | "synced" | "connection-close" | "connection-error" | "awareness",
//    "client": i, ...}                                 (unsolicited, as they happen)
//   {"event": "permission-denied", "client": i, "reason": "..."}  (the y-protocols auth message)
//   {"event": "lock-reply", "client": i, "body": {"id", "ok", "lock" | "error"}}  (ours, see `lock`)
//   {"event": "awareness-states", "client": i, "changes": {id: state | null}}  (after `trackStates`)
//   {"event": "content", "client": i, "text": "...", "map": {...}, "delta": [...],
//    "keys": {key: value | null}, "local": bool}   (after `trackContent`: every transaction)
//   {"reply": ID, "ok": true, ...} / {"reply": ID, "ok": false, "error": "..."}
//
// Commands are {"id": ID, "op": OP, "client": i | "all", ...}; see `ops` below, e.g.
//   {"id": 7, "op": "wait", "client": "all", "until": {"synced": true}, "within": 10}
// Every wait is bounded: a `wait` not satisfied `within` seconds replies with an
// error, says why on stderr and exits with status 2. The whole process exits with
// status 3 after --lifetime seconds, and with 0 when stdin closes (the test is gone).

import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'
import * as authProtocol from 'y-protocols/auth'
import * as awarenessProtocol from 'y-protocols/awareness'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    room: { type: 'string' },
    clients: { type: 'string', default: '1' },
    label: { type: 'string', default: 'node' },
    'defer-connect': { type: 'boolean', default: false },
    lifetime: { type: 'string', default: '60' },
    token: { type: 'string' }
  }
})
if (!args.url || !args.room) {
  die(64, 'usage: client.mjs --url ws://HOST:PORT --room NAME [--clients N] [--label L]')
}
const label = args.label

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

let dying = false

function die (code, message) {
  if (dying) return
  dying = true
  process.stderr.write(`client.mjs [${args.label ?? 'node'}]: ${message}\n`)
  // Let stdout drain (a pipe is asynchronous in Node) before exiting; should the
  // drain never end, exit anyway.
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 2000)
}

const lifetime = Number(args.lifetime) * 1000
setTimeout(() => die(3, `lifetime of ${args.lifetime} s exceeded: exiting`), lifetime).unref()

process.on('uncaughtException', (err) => die(1, `uncaught exception: ${err?.stack ?? err}`))
process.on('unhandledRejection', (err) => die(1, `unhandled rejection: ${err?.stack ?? err}`))

/** The pending `wait` commands, re-checked by `poke()` whenever something changes. */
const waiters = new Set()

// -- the clients --------------------------------------------------------------------------

const sha256 = (s) => createHash('sha256').update(s, 'utf8').digest('hex')
const now = () => performance.timeOrigin + performance.now()

/** The leases in the server's own awareness entry ({"server": {"locks": [...]}}), as
 * this client sees them ([] without a server entry or locks). */
const serverLocks = (c) => {
  for (const state of c.provider.awareness.getStates().values()) {
    if (state?.server !== undefined) return state.server?.locks ?? []
  }
  return []
}
/** A lease as {section, holder: holder.id}: what `serverLocks` compares (the server's
 * entry shows sections and holders, no fences or timings). */
const leaseKey = (l) => ({ section: l?.section, holder: l?.holder?.id })
const bySection = (a, b) => {
  const [x, y] = [JSON.stringify(a.section), JSON.stringify(b.section)]
  return x < y ? -1 : x > y ? 1 : 0
}

/** Awareness states as a plain object {clientID: state}. */
const awarenessStates = (c) => Object.fromEntries(c.provider.awareness.getStates())
const userNames = (c) =>
  [...c.provider.awareness.getStates().values()]
    .map((s) => s?.user?.name)
    .filter((n) => n !== undefined)
    .sort()

function makeClient (index) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(args.url, args.room, doc, {
    connect: false,
    disableBc: true,
    WebSocketPolyfill: WebSocket,
    ...(args.token === undefined ? {} : { params: { token: args.token } })
  })
  const c = {
    index,
    doc,
    provider,
    text: doc.getText('text'),
    map: doc.getMap('map'),
    status: 'new',
    trackStates: false,
    trackContent: false,
    permissionDenied: [],
    /** Messages received from the server, by y-websocket message type. */
    received: { sync: 0, awareness: 0, auth: 0 },
    /** The close codes of this client's connections, in order. */
    closeCodes: [],
    /** Our lock replies (message type 100, sub-type 3), as received: {id, ok, lock | error}. */
    lockReplies: []
  }
  provider.on('status', ({ status }) => {
    c.status = status
    emit({ event: 'status', client: index, status, t: now() })
    poke()
  })
  provider.on('sync', (synced) => {
    // The awareness states known when step 2 arrived: the server sends them before.
    emit({
      event: 'synced',
      client: index,
      synced,
      textLength: c.text.length,
      users: userNames(c),
      awareness: awarenessStates(c),
      t: now()
    })
    poke()
  })
  provider.on('connection-close', (event) => {
    c.closeCodes.push(event?.code ?? null)
    emit({ event: 'connection-close', client: index, code: event?.code ?? null, reason: event?.reason ?? null, t: now() })
    poke()
  })
  provider.on('connection-error', (event) => {
    emit({ event: 'connection-error', client: index, message: String(event?.message ?? event), t: now() })
  })
  provider.awareness.on('change', ({ added, updated, removed }, origin) => {
    emit({ event: 'awareness', client: index, added, updated, removed, local: origin === 'local', t: now() })
    if (c.trackStates) {
      // Opt-in (op `trackStates`): every state this client saw, as it saw it.
      const states = provider.awareness.getStates()
      const changes = {}
      for (const id of [...added, ...updated]) changes[id] = states.get(id) ?? null
      for (const id of removed) changes[id] = null
      emit({ event: 'awareness-states', client: index, changes, local: origin === 'local', t: now() })
    }
    poke()
  })
  // The y-protocols auth message (permission denied): y-websocket only logs it (a
  // console.warn, on our stderr); say so on stdout as well, then let it log.
  const authHandler = provider.messageHandlers[2]
  provider.messageHandlers[2] = (encoder, decoder, p, emitSynced, messageType) => {
    const copy = decoding.clone(decoder)
    authProtocol.readAuthMessage(copy, p.doc, (_ydoc, reason) => {
      c.permissionDenied.push(reason)
      emit({ event: 'permission-denied', client: index, reason, t: now() })
    })
    authHandler(encoder, decoder, p, emitSynced, messageType)
    c.received.auth++
    poke()
  }
  // Our messages (type 100, which y-websocket does not know and would log as an
  // error): a lock reply is recorded and emitted; `persisted` (sub-type 1) is read
  // and ignored. Nothing is written back (the encoder stays empty).
  provider.messageHandlers[100] = (_encoder, decoder) => {
    const sub = decoding.readVarUint(decoder)
    if (sub === 3) {
      const reply = JSON.parse(decoding.readVarString(decoder))
      c.lockReplies.push(reply)
      emit({ event: 'lock-reply', client: index, body: reply, t: now() })
    } else if (sub === 1) {
      decoding.readVarUint(decoder)
    } else {
      emit({ event: 'collab-message', client: index, sub, t: now() })
    }
    poke()
  }
  // Count what the server sends (before the handlers, which may throw).
  for (const [type, key] of [[0, 'sync'], [1, 'awareness']]) {
    const handler = provider.messageHandlers[type]
    provider.messageHandlers[type] = (...handlerArgs) => {
      c.received[key]++
      return handler(...handlerArgs)
    }
  }
  // Opt-in (op `trackContent`): what the application sees after every transaction
  // that changes the text or the map: both as they are then, and the changes their
  // observers were told of. Nothing in between is observable: Yjs integrates a
  // received update in one transaction.
  let seen = null
  c.text.observe((event) => {
    if (c.trackContent) (seen ??= {}).delta = event.delta
  })
  c.map.observe((event) => {
    if (!c.trackContent) return
    const keys = {}
    for (const key of event.keysChanged) keys[key] = c.map.has(key) ? c.map.get(key) : null
    ;(seen ??= {}).keys = keys
  })
  doc.on('afterTransaction', (tr) => {
    if (seen === null) return
    const { delta = [], keys = {} } = seen
    seen = null
    emit({
      event: 'content',
      client: index,
      text: c.text.toString(),
      map: c.map.toJSON(),
      delta,
      keys,
      local: tr.local,
      t: now()
    })
  })
  doc.on('update', () => poke())
  return c
}

const clients = Array.from({ length: Number(args.clients) }, (_, i) => makeClient(i))
emit({
  event: 'hello',
  label,
  clients: clients.map((c) => ({ client: c.index, clientID: c.doc.clientID }))
})
if (!args['defer-connect']) {
  // All in one tick: the connections start together.
  for (const c of clients) c.provider.connect()
}

function targets (cmd) {
  const which = cmd.client ?? 0
  if (which === 'all') return clients
  const c = clients[which]
  if (c === undefined) throw new Error(`no client ${which}`)
  return [c]
}

function snapshot (c, full = true) {
  const text = c.text.toString()
  return {
    client: c.index,
    clientID: c.doc.clientID,
    status: c.status,
    synced: c.provider.synced,
    textLength: c.text.length,
    textSha256: sha256(text),
    ...(full ? { text } : {}),
    map: c.map.toJSON(),
    awareness: awarenessStates(c),
    users: userNames(c),
    received: { ...c.received },
    closeCodes: [...c.closeCodes]
  }
}

// -- waiting for a condition ----------------------------------------------------------------

const canonical = (value) => JSON.stringify(value, (_k, v) =>
  v && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : v)

/** Each check takes a client and the expected value; every check given must hold. */
const checks = {
  synced: (c, v) => c.provider.synced === v,
  status: (c, v) => c.status === v,
  text: (c, v) => c.text.toString() === v,
  textLength: (c, v) => c.text.length === v,
  textIncludes: (c, v) => { const s = c.text.toString(); return v.every((x) => s.includes(x)) },
  mapHas: (c, v) => v.every((k) => c.map.has(k)),
  mapEquals: (c, v) => canonical(c.map.toJSON()) === canonical(v),
  users: (c, v) => canonical(userNames(c)) === canonical([...v].sort()),
  awarenessPresent: (c, v) => v.every((id) => c.provider.awareness.getStates().has(id)),
  awarenessAbsent: (c, v) => v.every((id) => !c.provider.awareness.getStates().has(id)),
  /** awareness.getStates().size: what "N online" badges and Tiptap's caret `users` count. */
  statesCount: (c, v) => c.provider.awareness.getStates().size === v,
  stampedUsers: (c, v) => v.every((id) => typeof c.provider.awareness.getStates().get(id)?.user?.id === 'string'),
  // {"<clientID>": {"dotted.path": value}}: each field of that client's state, as this
  // client sees it, equals value (null: the field is absent or null); the state exists.
  statesMatch: (c, v) => Object.entries(v).every(([id, fields]) => {
    const state = c.provider.awareness.getStates().get(Number(id))
    return state !== undefined && Object.entries(fields).every(([path, expected]) =>
      canonical(field(state, path) ?? null) === canonical(expected))
  }),
  // {"<clientID>": {"anchor": i, "head": j}}: that client's `cursor` resolves to these
  // indexes in this client's text.
  cursorAt: (c, v) => Object.entries(v).every(([id, expected]) => {
    const got = resolveCursor(c, Number(id))
    return got !== null && got.anchor === expected.anchor && got.head === expected.head
  }),
  /** At least this many permission-denied messages received. */
  permissionDenied: (c, v) => c.permissionDenied.length >= v,
  /** The server's awareness entry lists exactly these leases, each given as
   * {section, holder (the holder's user id)}; order does not matter. */
  serverLocks: (c, v) =>
    canonical(serverLocks(c).map(leaseKey).sort(bySection)) ===
    canonical([...v].sort(bySection)),
  /** At least this many lock replies received. */
  lockReplies: (c, v) => c.lockReplies.length >= v,
  /** At least this many connections closed with close code v[0]: [code, count]. */
  closedWith: (c, [code, count]) => c.closeCodes.filter((x) => x === code).length >= count,
  /** {root, xml, tree}: the Y.XmlFragment `root` reads as `xml` (its toString()) and
   * its `xmlTree` dump equals `tree` (either may be left out). */
  xmlMatches: (c, v) => {
    const fragment = c.doc.getXmlFragment(v.root ?? 'prosemirror')
    return (v.xml === undefined || fragment.toString() === v.xml) &&
      (v.tree === undefined || canonical(xmlTree(fragment)) === canonical(v.tree))
  }
}

/** `state.a.b` for the path "a.b" (undefined if any step is missing). */
function field (state, path) {
  let value = state
  for (const key of path.split('.')) value = value == null ? undefined : value[key]
  return value
}

// -- cursors (Yjs relative positions, as the editor bindings keep them) -------------------

/** A relative position at `index` of the client's text, in the shape `style` says:
 * "json": Y.relativePositionToJSON (y-codemirror.next), "object": the RelativePosition
 * itself, which JSON.stringify turns into {type, tname, item, assoc} (y-prosemirror). */
function relativePosition (c, index, assoc, style) {
  const rpos = Y.createRelativePositionFromTypeIndex(c.text, index, assoc ?? 0)
  if (style === 'object') return rpos
  if (style === 'json' || style === undefined) return Y.relativePositionToJSON(rpos)
  throw new Error(`unknown cursor style ${style}`)
}

/** The cursor of client `id` (its awareness field `cursor`), resolved in c's document:
 * {anchor, head} indexes in c.text (UTF-16 units), or null if there is none. */
function resolveCursor (c, id) {
  const cursor = c.provider.awareness.getStates().get(id)?.cursor
  if (cursor?.anchor == null || cursor?.head == null) return null
  const resolve = (json) => {
    const abs = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(json), c.doc)
    return abs === null || abs.type !== c.text ? null : abs.index
  }
  const anchor = resolve(cursor.anchor)
  const head = resolve(cursor.head)
  return anchor === null || head === null ? null : { anchor, head }
}

function holds (cs, until) {
  for (const [name, expected] of Object.entries(until)) {
    const check = checks[name]
    if (check === undefined) throw new Error(`unknown condition ${name}`)
    if (!cs.every((c) => check(c, expected))) return false
  }
  return true
}

function poke () {
  for (const w of [...waiters]) {
    if (w.check ? w.check() : holds(w.clients, w.until)) {
      waiters.delete(w)
      clearTimeout(w.timer)
      w.resolve()
    }
  }
}

function waitUntil (cs, until, timeoutSeconds) {
  // Validate the condition names at once, and return at once if it already holds.
  if (holds(cs, until)) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const w = { clients: cs, until, resolve }
    w.timer = setTimeout(() => {
      waiters.delete(w)
      const failing = Object.keys(until).filter((name) => !cs.every((c) => checks[name](c, until[name])))
      reject(new WaitTimeout(
        `timeout after ${timeoutSeconds} s waiting for ${JSON.stringify(until)} ` +
        `(failing: ${failing.join(', ')}) on clients ${cs.map((c) => c.index).join(',')}; ` +
        `states: ${JSON.stringify(cs.map((c) => snapshot(c, c.text.length <= 2000)))}`
      ))
    }, timeoutSeconds * 1000)
    waiters.add(w)
  })
}

class WaitTimeout extends Error {}

// -- editing ------------------------------------------------------------------------------

/** A small deterministic PRNG (mulberry32), so that a seed replays the same edits. */
function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;-_'

function randomAscii (rnd, length) {
  const out = new Array(length)
  for (let i = 0; i < length; i++) out[i] = ALPHABET[Math.floor(rnd() * ALPHABET.length)]
  return out.join('')
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** `count` random edits of the text and the map, interleaved with the network. */
async function randomEdits (c, { count, seed, tag }) {
  const rnd = prng(seed)
  for (let i = 0; i < count; i++) {
    const r = rnd()
    if (r < 0.45) {
      const at = Math.floor(rnd() * (c.text.length + 1))
      c.text.insert(at, `<${tag}${i}${rnd() < 0.3 ? 'é' : ''}>`)
    } else if (r < 0.6 && c.text.length > 0) {
      const at = Math.floor(rnd() * c.text.length)
      c.text.delete(at, Math.min(1 + Math.floor(rnd() * 3), c.text.length - at))
    } else if (r < 0.85) {
      // Few keys: the clients overwrite each other's values concurrently.
      c.map.set(`k${Math.floor(rnd() * 4)}`, `${tag}-${i}`)
    } else {
      c.doc.transact(() => {
        c.text.insert(c.text.length, `[${tag}${i}]`)
        c.map.set(`t${Math.floor(rnd() * 3)}`, { by: tag, i, nested: [i, `${tag}`] })
      })
    }
    // Yield to the event loop (and so to incoming updates) between edits.
    if (rnd() < 0.5) await pause(Math.floor(rnd() * 3))
    else await new Promise(setImmediate)
  }
  // Updates travel in order: whoever sees this key has seen all of this client's edits.
  c.map.set(`done:${tag}`, count)
}

// -- XML (the shape y-prosemirror gives a document) ------------------------------------------

/** A new (preliminary) Y.XmlElement or Y.XmlText from a spec, built as y-prosemirror
 * builds them: {name, attrs: {...}, children: [spec, ...]} is an element (attributes
 * set with setAttribute, any JSON value), {text: delta} an XmlText filled with
 * applyDelta (marks as formatting attributes: {insert, attributes: {bold: true}}). */
function xmlNode (spec) {
  if (spec.text !== undefined) {
    const text = new Y.XmlText()
    text.applyDelta(spec.text)
    return text
  }
  const element = new Y.XmlElement(spec.name)
  for (const [key, value] of Object.entries(spec.attrs ?? {})) element.setAttribute(key, value)
  element.insert(0, (spec.children ?? []).map(xmlNode))
  return element
}

/** The node at `path` (child indexes from the fragment `root`). */
function xmlAt (c, root, path = []) {
  let node = c.doc.getXmlFragment(root ?? 'prosemirror')
  for (const index of path) {
    const child = node instanceof Y.XmlFragment ? node.get(index) : undefined
    if (child === undefined) throw new Error(`no XML node at ${JSON.stringify(path)} (index ${index})`)
    node = child
  }
  return node
}

/** A structured dump of an XML node: {name, attrs, children} for an element,
 * {text: toDelta()} (with the formatting attributes) for an XmlText, {fragment: true,
 * children} for the fragment itself. */
function xmlTree (node) {
  if (node instanceof Y.XmlText) return { text: node.toDelta() }
  if (node instanceof Y.XmlElement) {
    return { name: node.nodeName, attrs: node.getAttributes(), children: node.toArray().map(xmlTree) }
  }
  if (node instanceof Y.XmlFragment) return { fragment: true, children: node.toArray().map(xmlTree) }
  if (node instanceof Y.XmlHook) return { hook: node.hookName, map: node.toJSON() }
  return { unknown: String(node) }
}

/** One edit of `xmlEdit` (see there). */
function xmlEditOne (c, root, edit) {
  const node = xmlAt(c, root, edit.path)
  switch (edit.do) {
    case 'insert': node.insert(edit.index, edit.nodes.map(xmlNode)); break
    case 'delete': node.delete(edit.index, edit.length ?? 1); break
    case 'setAttribute': node.setAttribute(edit.name, edit.value); break
    case 'removeAttribute': node.removeAttribute(edit.name); break
    case 'insertText': node.insert(edit.index, edit.text, edit.attributes ?? {}); break
    case 'deleteText': node.delete(edit.index, edit.length); break
    case 'format': node.format(edit.index, edit.length, edit.attributes); break
    default: throw new Error(`unknown XML edit ${edit.do}`)
  }
}

// -- commands -----------------------------------------------------------------------------

const ops = {
  /** Insert `text` at `index` (UTF-16 units, as Yjs counts; -1 or absent: at the end). */
  insert (cmd) {
    for (const c of targets(cmd)) {
      const at = cmd.index === undefined || cmd.index < 0 ? c.text.length : cmd.index
      c.text.insert(at, cmd.text)
    }
    return {}
  },
  delete (cmd) {
    for (const c of targets(cmd)) c.text.delete(cmd.index, cmd.length)
    return {}
  },
  mapSet (cmd) {
    for (const c of targets(cmd)) c.map.set(cmd.key, cmd.value)
    return {}
  },
  /** Set `inner` to `value` in the Y.Map under `key` of the map (made there first, in
   * its own transaction, if the key holds no Y.Map): a change under the key. */
  mapSetNested (cmd) {
    for (const c of targets(cmd)) {
      if (!(c.map.get(cmd.key) instanceof Y.Map)) c.map.set(cmd.key, new Y.Map())
      c.map.get(cmd.key).set(cmd.inner, cmd.value)
    }
    return {}
  },
  /** Send our lock request {id, op: lockOp, section, fence?, ttl?} (message type 100,
   * sub-type 2) from each target client, all in this tick (concurrent requests), then
   * wait (at most `within` seconds, default 5) for each one's reply. Replies with
   * {replies: [{client, reply}]} in the order of the targets. */
  async lock (cmd) {
    const sent = targets(cmd).map((c) => {
      const ws = c.provider.ws
      if (ws === null || ws.readyState !== WebSocket.OPEN) throw new Error(`client ${c.index} not connected`)
      const body = { id: `${label}.${c.index}.${cmd.id}`, op: cmd.lockOp, section: cmd.section }
      if (cmd.fence !== undefined) body.fence = cmd.fence
      if (cmd.ttl !== undefined) body.ttl = cmd.ttl
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, 100)
      encoding.writeVarUint(encoder, 2)
      encoding.writeVarString(encoder, JSON.stringify(body))
      ws.send(encoding.toUint8Array(encoder))
      return { c, id: body.id }
    })
    const within = cmd.within ?? 5
    const replies = await Promise.all(sent.map(({ c, id }) => {
      const found = () => c.lockReplies.find((r) => r.id === id)
      return new Promise((resolve, reject) => {
        if (found()) return resolve({ client: c.index, reply: found() })
        const w = {
          clients: [],
          until: {},
          resolve: () => resolve({ client: c.index, reply: found() })
        }
        // A waiter of its own: `poke` re-checks it whenever something arrives.
        w.check = found
        w.timer = setTimeout(() => {
          waiters.delete(w)
          reject(new WaitTimeout(`no lock reply to ${id} within ${within} s`))
        }, within * 1000)
        waiters.add(w)
      })
    }))
    return { replies }
  },
  /** The leases in the server's awareness entry, as each target client sees them. */
  serverLocks (cmd) {
    return { locks: targets(cmd).map((c) => serverLocks(c)) }
  },
  setUser (cmd) {
    for (const c of targets(cmd)) c.provider.awareness.setLocalStateField('user', cmd.user)
    return {}
  },
  /** Set one field of the local awareness state (null: remove the field). */
  setField (cmd) {
    for (const c of targets(cmd)) {
      if (cmd.value === null) {
        const state = { ...(c.provider.awareness.getLocalState() ?? {}) }
        delete state[cmd.field]
        c.provider.awareness.setLocalState(state)
      } else {
        c.provider.awareness.setLocalStateField(cmd.field, cmd.value)
      }
    }
    return {}
  },
  /** Set the field `cursor` to {anchor, head}: relative positions made from the text
   * indexes `anchor` and `head` (UTF-16 units), in the given `style` (json | object)
   * with `assoc`; reply with the cursor as it was sent (its JSON). */
  setCursor (cmd) {
    const out = []
    for (const c of targets(cmd)) {
      const cursor = {
        anchor: relativePosition(c, cmd.anchor, cmd.assoc, cmd.style),
        head: relativePosition(c, cmd.head, cmd.assoc, cmd.style)
      }
      c.provider.awareness.setLocalStateField('cursor', cursor)
      out.push(JSON.parse(JSON.stringify(cursor)))
    }
    return { cursors: out }
  },
  /** Client `of`'s cursor resolved in this client's document ({anchor, head} or null). */
  resolveCursor (cmd) {
    const [c] = targets(cmd)
    return { cursor: resolveCursor(c, cmd.of) }
  },
  /** Emit a `content` event after every transaction that changes this client's text
   * or map (see `trackContent` in makeClient). */
  trackContent (cmd) {
    for (const c of targets(cmd)) c.trackContent = true
    return {}
  },
  /** Emit an `awareness-states` event with the states of every change this client sees. */
  trackStates (cmd) {
    for (const c of targets(cmd)) c.trackStates = true
    return {}
  },
  /** Run `ops` (commands without id) one after the other in the same tick: edits made
   * this way on different clients are concurrent. Replies with their replies. */
  batch (cmd) {
    const replies = []
    for (const sub of cmd.ops) {
      const op = ops[sub.op]
      if (op === undefined || sub.op === 'batch' || sub.op === 'wait' || sub.op === 'exit' || sub.op === 'randomEdits' || sub.op === 'lock') {
        throw new Error(`op ${sub.op} cannot be batched`)
      }
      replies.push(op(sub))
    }
    return { replies }
  },
  /** Send, over this client's WebSocket, an awareness update for client id `as` (not
   * ours) with `state` at `clock`: made with y-protocols on an Awareness of its own
   * and framed as y-websocket frames awareness (message type 1). */
  spoofAwareness (cmd) {
    const [c] = targets(cmd)
    const ws = c.provider.ws
    if (ws === null || ws.readyState !== WebSocket.OPEN) throw new Error('not connected')
    const doc = new Y.Doc()
    doc.clientID = cmd.as
    const fake = new awarenessProtocol.Awareness(doc)
    fake.setLocalState(cmd.state)
    fake.meta.get(cmd.as).clock = cmd.clock
    const update = awarenessProtocol.encodeAwarenessUpdate(fake, [cmd.as])
    fake.destroy()
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint8Array(encoder, update)
    ws.send(encoding.toUint8Array(encoder))
    return {}
  },
  /** Insert `length` random ASCII characters in one transaction; reply with their hash. */
  insertRandom (cmd) {
    const [c] = targets(cmd)
    const s = randomAscii(prng(cmd.seed ?? 1), cmd.length)
    c.text.insert(cmd.index ?? c.text.length, s)
    return { length: s.length, sha256: sha256(s) }
  },
  async randomEdits (cmd) {
    await Promise.all(targets(cmd).map((c, k) =>
      randomEdits(c, { count: cmd.count, seed: (cmd.seed ?? 1) + k, tag: cmd.tag ?? `${label}.${c.index}` })))
    return {}
  },
  /** `count` tokens `<TAG.i>` inserted each at a random token boundary of the text
   * (0, or just after a `>`), so that, with nothing ever deleted, every token stays
   * whole and can be found again; with each, the map key `TAG.i` is set to i and the
   * shared key `shared<i % 3>` to "TAG.i" (concurrent overwrites), the three in one
   * transaction every third edit. Pauses 0..maxPauseMs (default 5) ms between edits;
   * the last edit sets `done:TAG` to `count`. Seeded by `seed`. */
  async insertTokens (cmd) {
    await Promise.all(targets(cmd).map(async (c, k) => {
      const rnd = prng((cmd.seed ?? 1) + k)
      const tag = cmd.tag ?? `${label}.${c.index}`
      const maxPause = cmd.maxPauseMs ?? 5
      for (let i = 0; i < cmd.count; i++) {
        const edit = () => {
          const text = c.text.toString()
          const boundaries = [0]
          for (let j = 0; j < text.length; j++) if (text[j] === '>') boundaries.push(j + 1)
          c.text.insert(boundaries[Math.floor(rnd() * boundaries.length)], `<${tag}.${i}>`)
          c.map.set(`${tag}.${i}`, i)
          c.map.set(`shared${i % 3}`, `${tag}.${i}`)
        }
        if (i % 3 === 0) c.doc.transact(edit)
        else edit()
        await pause(Math.floor(rnd() * (maxPause + 1)))
      }
      c.map.set(`done:${tag}`, cmd.count)
    }))
    return {}
  },
  /** Edit the Y.XmlFragment `root` (default "prosemirror") in ONE transaction, as
   * y-prosemirror applies an editor transaction. Each of `edits` is {do, path, ...}
   * with `path` the child indexes from the fragment to the node edited:
   *   {do: "insert", path, index, nodes: [spec]}   (specs: see xmlNode)
   *   {do: "delete", path, index, length}
   *   {do: "setAttribute" | "removeAttribute", path, name, value}  (path to an element)
   *   {do: "insertText", path, index, text, attributes}             (path to an XmlText)
   *   {do: "deleteText", path, index, length}
   *   {do: "format", path, index, length, attributes}   (null removes a mark) */
  xmlEdit (cmd) {
    for (const c of targets(cmd)) {
      c.doc.transact(() => { for (const edit of cmd.edits) xmlEditOne(c, cmd.root, edit) })
    }
    return {}
  },
  /** The Y.XmlFragment `root` of each target client: {xml: toString(), tree: xmlTree
   * dump, stateVector: {clientID: clock}}. */
  xmlDump (cmd) {
    return {
      dumps: targets(cmd).map((c) => {
        const fragment = c.doc.getXmlFragment(cmd.root ?? 'prosemirror')
        return {
          client: c.index,
          xml: fragment.toString(),
          tree: xmlTree(fragment),
          stateVector: Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(c.doc)))
        }
      })
    }
  },
  connect (cmd) {
    for (const c of targets(cmd)) c.provider.connect()
    return {}
  },
  /** Drop the socket abruptly, as a network failure would: y-websocket reconnects. */
  dropSocket (cmd) {
    for (const c of targets(cmd)) c.provider.ws?.terminate()
    return {}
  },
  disconnect (cmd) {
    for (const c of targets(cmd)) c.provider.disconnect()
    return {}
  },
  async wait (cmd) {
    const started = now()
    await waitUntil(targets(cmd), cmd.until, cmd.within ?? 10)
    return { t: now(), elapsedMs: now() - started }
  },
  state (cmd) {
    return { states: targets(cmd).map((c) => snapshot(c, cmd.full ?? true)) }
  },
  exit () {
    dying = true
    for (const c of clients) c.provider.destroy()
    process.stdout.write(JSON.stringify({ event: 'bye' }) + '\n', () => process.exit(0))
    return null
  }
}

async function handle (line) {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    die(64, `not a JSON command: ${line}`)
    return
  }
  const op = ops[cmd.op]
  try {
    if (op === undefined) throw new Error(`unknown op ${cmd.op}`)
    const result = await op(cmd)
    if (result !== null) emit({ reply: cmd.id, ok: true, ...result })
  } catch (err) {
    emit({ reply: cmd.id, ok: false, error: String(err?.message ?? err) })
    if (err instanceof WaitTimeout) die(2, err.message)
  }
}

const input = createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on('line', (line) => { if (line.trim()) handle(line) })
// The test closed our stdin (or died): leave.
input.on('close', () => die(0, 'stdin closed: exiting'))
