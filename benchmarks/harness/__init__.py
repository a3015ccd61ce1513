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
- `footprint`: a server's memory: its settled RSS at rest and with idle clients
  (connections, empty or loaded documents), a fresh server per measurement.
- `throughput`: update throughput through the permission and lock checks, in
  process: the workload, the peer of each configuration, one measured run.
- `admission`: connections admitted by our server, open and with a token and grants.
- `one_writer`: one writer and N observers on `clients`, in one room of ours, run
  once and measured, with both event loops' scheduler time.
- `cursors`: the cursor load (senders moving cursors, observers reading awareness)
  run once against ours and measured: latency, staleness, convergence.
- `sampling`: CPU and scheduler readings from /proc (the machine, threads, run queue),
  and waiting on them for the machine to be quiet.
- `profiling`: py-spy and cProfile of our server, and their summaries.
- `stats`: percentiles and medians that skip NaN.
- `report`: number formats and the parts of a results file every script writes
  (heading, Markdown tables and lists, problems, server logs).
- `options`: the command-line flags the scripts share, and how a script's `main` runs.
- `plots`: PNG figures of results by size (matplotlib).
- `provenance`: package versions, the commit measured, the machine.
- `traces`: the editing traces (josephg/editing-traces) and reading them.
- `yjs`: Node's `yjs` driven through `peers/yjs_replay.mjs`.
- `stores`: a fresh SQLite file or PostgreSQL schema per run; SQLite files on disk.
- `scheduling`: the load generator's scheduling policy, and the servers'.

Scripts import it as `harness` (they run as `python benchmarks/<script>.py`, so
`benchmarks/` is on the path).
"""
