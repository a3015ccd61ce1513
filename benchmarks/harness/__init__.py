"""What every benchmark repeats, one module per noun.

- `servers`: the servers under test (ours, the Node y-websocket server, Hocuspocus,
  pycrdt-websocket) as processes: start, stop, CPU, memory, logs.
- `wire`: a minimal WebSocket client (`Link`), cheap enough for a fleet of hundreds.
- `fleet`: y-websocket and Hocuspocus clients on `Link` (observers, full clients,
  writers), connecting and closing a fleet.
- `clients`: plain `websockets` clients (open, sync, close), for a few clients.
- `load`: the editing load (writers and observers per room) run once against one
  server and measured: fan-out latency, deliveries, convergence, CPU, memory.
- `session`: the runs of that load at one size and mode against every server,
  interleaved, with the generator's warm-up run and restarts.
- `cluster`: several server processes (ours, or Hocuspocus with its Redis extension)
  on one Redis and PostgreSQL database, started and stopped together, one target of
  that load: a port per node, the CPU of each node, Redis and PostgreSQL.
- `footprint`: a server's memory: its settled RSS at rest and with idle clients
  (connections, empty or loaded documents), a fresh server per measurement.
- `throughput`: update throughput through the permission and lock checks, in
  process: the workload, the peer of each configuration, one measured run.
- `admission`: connections admitted by our server, open and with a token and grants.
- `one_writer`: one writer and N observers on `clients`, in one room of ours, run
  once and measured, with both event loops' scheduler time.
- `cursors`: the cursor load (senders moving cursors, observers reading awareness)
  run once against ours and measured: latency, staleness, convergence.
- `sampling`: CPU and scheduler readings from /proc (the machine, threads, run queue,
  services such as Redis and PostgreSQL), and waiting on them for the machine to be quiet.
- `profiling`: py-spy and cProfile of our server, and their summaries; cProfile of calls.
- `stats`: percentiles and medians that skip NaN.
- `report`: number formats and the parts of a results file every script writes
  (heading, Markdown tables and lists, problems, server logs).
- `options`: the command-line flags the scripts share, and how a script's `main` runs.
- `plots`: PNG figures of results by size (matplotlib).
- `provenance`: package versions, the commit measured, the machine.
- `traces`: the editing traces (josephg/editing-traces): reading them, their patches
  in code points, UTF-8 and UTF-16, and what each replica of a concurrent one receives.
- `replay`: a trace replayed and timed in this process: raw pycrdt, our engine's
  embedding API, one pycrdt replica per agent; every final text checked.
- `remote`: the remote path: a trace's updates applied one by one, and merged.
- `yjs`: Node's `yjs` driven through `peers/yjs_replay.mjs`, one function per mode.
- `timings`: the seconds of trace replays over the runs, as tables, bars and JSON.
- `stores`: a fresh SQLite file or PostgreSQL schema per run (or a fresh PostgreSQL
  database, for a cluster), `SQLStore.append` timed alone; SQLite files on disk.
- `writers`: writers in an engine in this process, each with one update in flight
  until the journal acknowledges it, run once and measured.
- `history`: an editing trace replayed into a document's log, written to SQLite files
  with or without snapshots, and the room brought back from them, timed.
- `versions`: version history's calls (content, diff, restore) timed and checked,
  against loading and rebuilding the whole log and Yjs.
- `scheduling`: the load generator's scheduling policy, and the servers'.

Scripts import it as `harness` (they run as `python benchmarks/<script>.py`, so
`benchmarks/` is on the path).
"""
