// MQTT over WebSocket with the npm `mqtt` package (the field app's MQTT library), run by
// tests/websocket.rs against a live jiandu: for MQTT 3.1.1 and 5, a device logs in on /mqtt,
// sends heartbeats with `seq` and gets exactly those acknowledged (`inbox/ack` `hb_seq`); a
// wrong token is refused with the CONNACK code; another device's topic is refused (named on
// `inbox/error`). Prints `ok v4` / `ok v5`; exits non-zero with a message on the first failure.
import mqtt from 'mqtt';

const URL = process.env.JD_WS_URL;
const DEV = process.env.JD_DEVICE;
const TOKEN = process.env.JD_TOKEN;
const OTHER = process.env.JD_OTHER;

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

function within(ms, what, promise) {
  return Promise.race([promise, new Promise((_, no) => setTimeout(() => no(new Error(`timed out: ${what}`)), ms))]);
}

function login(version, password) {
  const client = mqtt.connect(URL, {
    clientId: `${DEV}-node${version}`, username: DEV, password, protocolVersion: version,
    reconnectPeriod: 0, connectTimeout: 10000, clean: true,
  });
  const opened = new Promise((ok, no) => {
    client.once('connect', () => ok(client));
    client.once('error', (e) => no(e));
    client.once('close', () => no(new Error('closed before CONNACK')));
  });
  return within(15000, `CONNACK v${version}`, opened);
}

async function round(version, seq0) {
  const client = await login(version, TOKEN);
  const inbox = [];
  let wake = () => {};
  client.on('message', (topic, payload) => { inbox.push([topic, JSON.parse(payload.toString())]); wake(); });
  const next = (pred, what) => within(15000, what, new Promise((ok) => {
    const look = () => { const hit = inbox.find(pred); if (hit) ok(hit); };
    wake = look; look();
  }));
  await client.subscribeAsync(`jd/v1/dev/${DEV}/inbox/#`, { qos: 1 });
  const ts = Date.now();
  const points = [0, 1, 2].map((i) => ({ seq: seq0 + i, ts: ts + i, lat: 36.5 + i * 1e-4, lon: 118.54, duty: 'on' }));
  await client.publishAsync(`jd/v1/dev/${DEV}/hb`, JSON.stringify(points), { qos: 1 });
  const [, ack] = await next(([t, b]) => t.endsWith('/inbox/ack') && b.hb_seq, `hb_seq v${version}`);
  check(JSON.stringify(ack.hb_seq) === JSON.stringify([[seq0, seq0 + 2]]), `v${version}: ack ${JSON.stringify(ack)}`);
  // Another device's topic: refused (MQTT 5: PUBACK 0x87), named on our inbox/error.
  let puback = null;
  try {
    await client.publishAsync(`jd/v1/dev/${OTHER}/hb`, JSON.stringify({ ts, lat: 1, lon: 1 }), { qos: 1 });
  } catch (e) {
    puback = e;
  }
  if (version === 5) check(puback && /135|0x87|Not authorized/i.test(String(puback.code ?? puback.message)), `v5: foreign topic not refused in PUBACK: ${puback}`);
  const [, err] = await next(([t]) => t.endsWith('/inbox/error'), `inbox/error v${version}`);
  check(err.topic === `jd/v1/dev/${OTHER}/hb`, `v${version}: error names ${JSON.stringify(err)}`);
  await client.endAsync();
  // A wrong token: refused with "bad user name or password" (3.1.1: 4, 5: 0x86 = 134).
  let refused = null;
  try {
    await login(version, 'not-the-token');
  } catch (e) {
    refused = e;
  }
  check(refused && [4, 134].includes(refused.code), `v${version}: wrong token not refused: ${refused} code=${refused?.code}`);
  console.log(`ok v${version}`);
}

try {
  await round(4, 5000);
  await round(5, 6000);
  process.exit(0);
} catch (e) {
  console.error(e.stack || String(e));
  process.exit(1);
}
