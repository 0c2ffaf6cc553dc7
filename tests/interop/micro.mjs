// The official nats.js services API, on both sides of natsmesh:
//   node micro.mjs client URL NAME  -> prints {ping, info, stats, error} as JSON, as nats.js sees them
//   node micro.mjs serve URL        -> runs a JS micro service "jsmath" (endpoint "add" on
//                                      subject "math.v1.add"), prints "ready", stops on stdin close
import { connect } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";

const [mode, url, name] = process.argv.slice(2);
const nc = await connect({ servers: url });
const svcm = new Svcm(nc);

async function collect(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

if (mode === "client") {
  // An error reply must carry the NATS micro error headers that nats.js reads.
  const reply = await nc.request(`mesh.${name}.fail`, new Uint8Array(), { timeout: 2000 });
  const error = {
    code: reply.headers?.get("Nats-Service-Error-Code"),
    message: reply.headers?.get("Nats-Service-Error"),
  };
  const client = svcm.client({ maxWait: 1000 });
  const ping = await collect(await client.ping(name));
  const info = await collect(await client.info(name));
  const stats = await collect(await client.stats(name));
  console.log(JSON.stringify({ ping, info, stats, error }));
} else if (mode === "serve") {
  const srv = await svcm.add({ name: "jsmath", version: "1.0.0", description: "adds, in JS" });
  srv.addGroup("math.v1").addEndpoint("add", {
    handler: (err, msg) => {
      const { a, b } = msg.json();
      msg.respond(JSON.stringify({ sum: a + b, lang: "js" }));
    },
  });
  console.log("ready");
  process.stdin.resume();
  process.stdin.on("end", async () => {
    await srv.stop();
    await nc.close();
    process.exit(0);
  });
} else {
  console.error("usage: node micro.mjs client URL NAME | serve URL");
  process.exit(2);
}
if (mode === "client") await nc.close();
