// Yjs side of the benchmarks (merge_throughput.py, append_run.py, version_history.py):
// replays editing traces with the npm `yjs` package and prints one JSON object on
// stdout. Timings cover the replay only (reading and parsing the input come first,
// outside the clock).
//
//   node benchmarks/peers/yjs_replay.mjs local PATCHES.json
//       PATCHES.json: {"patches": [[index, deleteCount, text], ...]} in UTF-16 code
//       units (what Yjs counts); one Y.Doc, getText("text"), each patch in its own
//       doc.transact(). -> {seconds, cpu_seconds (the process's, user + system),
//       patches, text}
//   node benchmarks/peers/yjs_replay.mjs remote UPDATES.bin ['{"fanIn":256,"sample":8000,"cap":60,"all":true}']
//       UPDATES.bin: updates, each a little-endian u32 length then its bytes.
//       (1) Y.applyUpdate of each into a new Y.Doc; (2) a tree of Y.mergeUpdates of
//       at most `fanIn` updates each, then Y.applyUpdate of the merged update into
//       another new Y.Doc; (3) when `all`, Y.mergeUpdates of all of them at once,
//       unless a quadratic extrapolation from merging the first `sample` exceeds
//       `cap` seconds. -> {apply_seconds, tree_merge_seconds, apply_merged_seconds,
//       merged_bytes, updates, text, merged_text, merge_all_estimate,
//       merge_all_seconds?, merge_all_text?}
//   node benchmarks/peers/yjs_replay.mjs concurrent SCHEDULE.json
//       SCHEDULE.json: {"clientIds": [...], "steps": [{"agent", "deliver": [txn
//       indexes], "patches": [[index16, delete16, text], ...]}], "final": [[txn
//       indexes] per agent]}: one Y.Doc per agent; before each transaction its
//       agent's replica applies the updates of the transactions it is missing
//       (`deliver`), then the transaction's patches run in one doc.transact() whose
//       update (the doc's "update" event) is kept for the other replicas. Then every
//       replica applies what it still misses (`final`): the convergence.
//       -> {replay_seconds, converge_seconds, texts}
//   node benchmarks/peers/yjs_replay.mjs stepwise UPDATES.bin '{"parts":4,"observe":true}'
//       Y.applyUpdate of each update into one new Y.Doc (with an "update" listener
//       when `observe`, as a server has), each timed on its own; the updates are
//       cut into `parts` equal parts in order. -> {part_seconds: [seconds spent
//       applying each part's updates], updates, text}
//   node benchmarks/peers/yjs_replay.mjs apply UPDATES.bin
//       Y.applyUpdate of each update into one new Y.Doc, timed as a whole.
//       -> {seconds, updates, text}
//
// yjs is resolved from tests/interop/node_modules (where the interoperability
// tests install it), then from a package beside this script, then NODE_PATH.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

function loadYjs() {
  const bases = [
    new URL("../../tests/interop/package.json", import.meta.url),
    new URL("./package.json", import.meta.url),
  ];
  for (const base of bases) {
    try {
      return createRequire(fileURLToPath(base))("yjs");
    } catch {
      // next
    }
  }
  return createRequire(import.meta.url)("yjs"); // NODE_PATH
}

const Y = loadYjs();
const [mode, input] = process.argv.slice(2);

function readUpdates(path) {
  const data = readFileSync(path);
  const updates = [];
  for (let offset = 0; offset < data.length; ) {
    const length = data.readUInt32LE(offset);
    updates.push(new Uint8Array(data.buffer, data.byteOffset + offset + 4, length));
    offset += 4 + length;
  }
  return updates;
}

function applyPatches(text, patches) {
  for (const [index, deleted, inserted] of patches) {
    if (deleted) text.delete(index, deleted);
    if (inserted) text.insert(index, inserted);
  }
}

function local(path) {
  const { patches } = JSON.parse(readFileSync(path, "utf8"));
  const doc = new Y.Doc();
  const text = doc.getText("text");
  const cpu = process.cpuUsage();
  const started = performance.now();
  for (const [index, deleted, inserted] of patches) {
    doc.transact(() => {
      if (deleted) text.delete(index, deleted);
      if (inserted) text.insert(index, inserted);
    });
  }
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const cpu_seconds = (used.user + used.system) / 1e6;
  return { seconds, cpu_seconds, patches: patches.length, text: text.toString() };
}

function apply(path) {
  const updates = readUpdates(path);
  const doc = new Y.Doc();
  const started = performance.now();
  for (const update of updates) Y.applyUpdate(doc, update);
  const seconds = (performance.now() - started) / 1000;
  return { seconds, updates: updates.length, text: doc.getText("text").toString() };
}

function treeMerge(updates, fanIn) {
  let level = updates;
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i < level.length; i += fanIn) next.push(Y.mergeUpdates(level.slice(i, i + fanIn)));
    level = next;
  }
  return level[0];
}

function textOf(update) {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, update);
  return doc.getText("text").toString();
}

function remote(path, options) {
  const { fanIn, sample, cap, all } = options;
  const updates = readUpdates(path);
  const doc = new Y.Doc();
  let started = performance.now();
  for (const update of updates) Y.applyUpdate(doc, update);
  const apply_seconds = (performance.now() - started) / 1000;
  started = performance.now();
  const merged = treeMerge(updates, fanIn);
  const tree_merge_seconds = (performance.now() - started) / 1000;
  const other = new Y.Doc();
  started = performance.now();
  Y.applyUpdate(other, merged);
  const apply_merged_seconds = (performance.now() - started) / 1000;
  const answer = {
    apply_seconds,
    tree_merge_seconds,
    apply_merged_seconds,
    merged_bytes: merged.length,
    updates: updates.length,
    text: doc.getText("text").toString(),
    merged_text: other.getText("text").toString(),
  };
  if (all) {
    // Y.mergeUpdates(all) at once, unless a quadratic extrapolation from merging
    // the first `sample` updates exceeds `cap` seconds.
    const part = updates.slice(0, sample);
    started = performance.now();
    Y.mergeUpdates(part);
    const estimate = ((performance.now() - started) / 1000) * (updates.length / part.length) ** 2;
    answer.merge_all_estimate = estimate;
    if (estimate <= cap) {
      started = performance.now();
      const all = Y.mergeUpdates(updates);
      answer.merge_all_seconds = (performance.now() - started) / 1000;
      answer.merge_all_text = textOf(all);
    }
  }
  return answer;
}

function concurrent(path) {
  const schedule = JSON.parse(readFileSync(path, "utf8"));
  const LOCAL = Symbol("local");
  const replicas = schedule.clientIds.map((clientId) => {
    const doc = new Y.Doc();
    doc.clientID = clientId;
    return { doc, text: doc.getText("text"), last: null };
  });
  for (const replica of replicas) {
    replica.doc.on("update", (update, origin) => {
      if (origin === LOCAL) replica.last = update;
    });
  }
  const updates = new Array(schedule.steps.length);
  let started = performance.now();
  schedule.steps.forEach((step, index) => {
    const replica = replicas[step.agent];
    for (const missing of step.deliver) if (updates[missing]) Y.applyUpdate(replica.doc, updates[missing]);
    replica.last = null;
    replica.doc.transact(() => applyPatches(replica.text, step.patches), LOCAL);
    updates[index] = replica.last;
  });
  const replay_seconds = (performance.now() - started) / 1000;
  started = performance.now();
  schedule.final.forEach((missing, agent) => {
    for (const index of missing) if (updates[index]) Y.applyUpdate(replicas[agent].doc, updates[index]);
  });
  const converge_seconds = (performance.now() - started) / 1000;
  return { replay_seconds, converge_seconds, texts: replicas.map((r) => r.text.toString()) };
}

function stepwise(path, options) {
  const { parts, observe } = options;
  const updates = readUpdates(path);
  const doc = new Y.Doc();
  let seen = 0;
  if (observe) doc.on("update", (update) => { seen += update.length; });
  const size = Math.floor(updates.length / parts);
  const part_seconds = new Array(parts).fill(0);
  updates.forEach((update, index) => {
    const started = performance.now();
    Y.applyUpdate(doc, update);
    const part = Math.min(parts - 1, Math.floor(index / size));
    part_seconds[part] += (performance.now() - started) / 1000;
  });
  if (observe && seen === 0) throw new Error("the update listener saw nothing");
  return { part_seconds, updates: updates.length, text: doc.getText("text").toString() };
}

const modes = { local, remote, concurrent, stepwise, apply };
if (!(mode in modes) || !input) {
  process.stderr.write("usage: yjs_replay.mjs local|remote|concurrent|stepwise|apply FILE [OPTIONS-JSON]\n");
  process.exit(2);
}
const options = {
  fanIn: 256,
  sample: 8000,
  cap: 60,
  all: true,
  ...JSON.parse(process.argv[4] ?? "{}"),
};
process.stdout.write(JSON.stringify(modes[mode](input, options)));
