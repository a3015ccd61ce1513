// Hocuspocus (@hocuspocus/server 3.4.4) as a plain collaboration server for
// benchmarks/server_fanout.py: no extensions, no persistence, no authentication hook
// (every token is accepted), its defaults otherwise. Listens on $HOST:$PORT.
import { Server } from "@hocuspocus/server";

const host = process.env.HOST || "127.0.0.1";
const port = Number.parseInt(process.env.PORT || "1234", 10);

const server = new Server({
	address: host,
	port,
	quiet: true,
	stopOnSignals: true,
	async onListen() {
		console.log(`hocuspocus listening on ws://${host}:${port}`);
	},
});

await server.listen();
