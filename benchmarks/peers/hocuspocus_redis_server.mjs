// Hocuspocus (@hocuspocus/server 3.4.4) with @hocuspocus/extension-redis 3.4.4, for
// benchmarks/cluster_fanout.py: instances on one Redis serve the same documents,
// each holding its own copy and passing changes to the others through Redis pub/sub.
// No persistence, no authentication hook (every token is accepted), the extension's
// defaults otherwise. Configured by the environment:
//   HOST, PORT                where this instance listens (127.0.0.1, 1234)
//   REDIS_HOST, REDIS_PORT    the Redis the instances share (127.0.0.1, 6379)
//   REDIS_PREFIX              the prefix of its channels and keys (hocuspocus)
//   NODE_ID                   the instance's identifier in Redis (a random one)
import crypto from "node:crypto";
import { Redis } from "@hocuspocus/extension-redis";
import { Server } from "@hocuspocus/server";

const host = process.env.HOST || "127.0.0.1";
const port = Number.parseInt(process.env.PORT || "1234", 10);
const redis = new Redis({
	host: process.env.REDIS_HOST || "127.0.0.1",
	port: Number.parseInt(process.env.REDIS_PORT || "6379", 10),
	prefix: process.env.REDIS_PREFIX || "hocuspocus",
	identifier: process.env.NODE_ID || `host-${crypto.randomUUID()}`,
});

const server = new Server({
	address: host,
	port,
	quiet: true,
	stopOnSignals: true,
	extensions: [redis],
	async onListen() {
		console.log(`hocuspocus listening on ws://${host}:${port}`);
	},
});

await server.listen();
