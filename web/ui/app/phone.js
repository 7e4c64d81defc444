// The phone side of the v1 wire contract (DESIGN §3), over MQTT on `wss://host/mqtt`: presence
// with a last will, heartbeats from the Geolocation API with `seq` kept until an `inbox/ack`
// `hb_seq` range names them (re-sent as backlog arrays after a reconnect or 10 s unconfirmed),
// reports and assignment statuses kept until acknowledged, look-ups, and evidence uploaded in
// chunks, resumed from `partial` receipts, its `stored` receipt checked against the platform key
// (`jd/v1/platform/key`) with WebCrypto Ed25519. The same contract as sim/src/phone.rs.
import mqtt from 'mqtt';
import { sha256 } from '@noble/hashes/sha2';
import * as db from './db.js';

/** Bytes per evidence chunk (the contract allows up to 256 KiB). */
const CHUNK = 64 * 1024;
/** Unconfirmed heartbeats and messages are sent again after this long. */
const RESEND_MS = 10_000;
/** Most points in one backlog message. */
const MAX_BACKLOG = 1000;
/** Media types the platform accepts as evidence (DESIGN §3). */
const MIME = /^(image\/(jpeg|png|webp|heic|heif|gif)|video\/(mp4|quicktime|3gpp|webm)|audio\/(mp4|aac|mpeg|ogg|webm|amr|3gpp|wav))$/;

/** What the screens show; `changed()` tells them to redraw. */
export const state = {
  creds: null, interval: 10, status: 'offline', refused: null, duty: 'off', fix: null, fixError: null,
  queuedPoints: 0, queuedMessages: 0, generated: 0, offer: null, job: null, uploads: [], key: null,
  reports: [], lookups: new Map(), notice: null,
};
const listeners = new Set();
/** Calls `f` whenever the state changes. */
export function onChange(f) { listeners.add(f); }
let redraw = 0;
function changed() {
  if (redraw) return;
  redraw = requestAnimationFrame(() => { redraw = 0; for (const f of listeners) f(); });
}

let client = null;
let connected = false;
let backoff = 1000;
let reconnectTimer = 0;
let lastTs = 0;
let watchId = null;
let offerTimer = 0;
const uploading = new Set();

const top = (s) => `jd/v1/dev/${state.creds.device}/${s}`;
const wsUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/mqtt`;
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));

/** A ULID (Crockford base32, lowercase): the id of a report or evidence item. */
export function ulid() {
  const A = '0123456789abcdefghjkmnpqrstvwxyz';
  let t = Date.now();
  let s = '';
  for (let i = 0; i < 10; i++) { s = A[t % 32] + s; t = Math.floor(t / 32); }
  const r = crypto.getRandomValues(new Uint8Array(16));
  for (let i = 0; i < 16; i++) s += A[r[i] % 32];
  return s;
}

/** Starts the phone: connection, location and the re-send clock. */
export async function start(creds) {
  state.creds = creds;
  state.interval = (await db.get('interval')) ?? 10;
  state.duty = (await db.get('duty')) ?? 'off';
  state.job = (await db.get('job')) ?? null;
  state.generated = (await db.get('generated')) ?? 0;
  state.reports = (await db.get('reports')) ?? [];
  // An offer survives a reload until it expires.
  const offer = await db.get('offer');
  state.offer = offer && offer.respond_by > Date.now() ? offer : null;
  state.uploads = await db.all('uploads');
  await counts();
  window.addEventListener('online', () => { backoff = 1000; connect(); });
  window.addEventListener('offline', () => drop('the browser went offline'));
  connect();
  if (state.duty !== 'off') track(true);
  setInterval(tick, 1000);
  setInterval(resend, 3000);
  changed();
}

async function counts() {
  state.queuedPoints = await db.count('points');
  state.queuedMessages = await db.count('outbox');
  changed();
}

function connect() {
  if (client || !state.creds) return;
  clearTimeout(reconnectTimer);
  if (!navigator.onLine) { state.status = 'offline'; changed(); return; }
  state.status = 'connecting';
  changed();
  const { device, token } = state.creds;
  const c = mqtt.connect(wsUrl(), {
    clientId: device, username: device, password: token, protocolVersion: 4, clean: true, keepalive: 30,
    reconnectPeriod: 0, connectTimeout: 10_000, resubscribe: false,
    will: { topic: top('presence'), payload: JSON.stringify({ online: false, ts: Date.now() }), qos: 1, retain: true },
  });
  client = c;
  c.on('connect', () => onConnected(c));
  c.on('message', (topic, payload) => onMessage(topic, payload).catch((e) => console.warn('inbox', topic, e)));
  c.on('error', (e) => {
    // A refused login (bad or revoked token) is not retried quickly.
    if ([4, 5, 134, 135].includes(e.code)) { state.refused = e.message; backoff = 30_000; }
  });
  c.on('close', () => {
    if (client !== c) return;
    client = null;
    connected = false;
    state.status = 'offline';
    changed();
    reconnectTimer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10_000);
  });
}

/** Ends the connection at once (no DISCONNECT: the platform sends the will). */
function drop(why) {
  const c = client;
  client = null;
  connected = false;
  state.status = 'offline';
  if (c) c.end(true);
  console.info('connection dropped:', why);
  changed();
}

async function onConnected(c) {
  connected = true;
  backoff = 1000;
  state.refused = null;
  state.status = 'connected';
  changed();
  await c.subscribeAsync([top('inbox/#'), 'jd/v1/platform/key'], { qos: 1 }).catch(() => {});
  publish(top('presence'), { online: true, ts: Date.now() }, true);
  await resend(true);
  for (const u of state.uploads) {
    if (u.state === 'queued' || u.state === 'uploading') { u.metasOut = 0; sendMeta(u); }
  }
}

/** Publishes at QoS 1 if connected; false otherwise (the caller keeps the message). */
function publish(topic, body, retain = false) {
  if (!connected || !client) return false;
  const payload = body instanceof Uint8Array ? body : JSON.stringify(body);
  client.publish(topic, payload, { qos: 1, retain });
  return true;
}

// --- location and heartbeats ---------------------------------------------------------------

function track(on) {
  if (on && watchId === null && navigator.geolocation) {
    watchId = navigator.geolocation.watchPosition(onFix, (e) => { state.fixError = e.message; changed(); },
      { enableHighAccuracy: true, maximumAge: 0, timeout: 60_000 });
  } else if (!on && watchId !== null) {
    navigator.geolocation.clearWatch(watchId);
    watchId = null;
  }
}

function onFix(pos) {
  const c = pos.coords;
  const num = (v, lo, hi) => (Number.isFinite(v) && v >= lo && v <= hi ? Math.round(v * 10) / 10 : undefined);
  state.fix = {
    lat: c.latitude, lon: c.longitude, acc: num(c.accuracy, 0, 100_000), spd: num(c.speed, 0, 100),
    hdg: num(c.heading, 0, 360), alt: num(c.altitude, -1000, 10_000), at: Date.now(),
  };
  state.fixError = null;
  changed();
}

/** The duty the phone reports: busy on an accepted assignment. */
export function duty() {
  return state.job ? 'busy' : state.duty;
}

let nextBeat = 0;
let battery = null;
navigator.getBattery?.().then((b) => { battery = b; }).catch(() => {});

async function tick() {
  if (state.offer && state.offer.respond_by < Date.now() && !state.offer.expired) { state.offer.expired = true; stopRinging(); }
  if (state.offer) changed();
  if (state.duty === 'off' || !state.fix || Date.now() < nextBeat) return;
  nextBeat = Date.now() + state.interval * 1000;
  // A fresh fix each interval where the phone gives one quickly; the watch keeps the last.
  navigator.geolocation?.getCurrentPosition(onFix, () => {}, { enableHighAccuracy: true, maximumAge: 0, timeout: 5000 });
  await beat(duty());
}

async function beat(d) {
  if (!state.fix) return;
  const ts = Math.max(Date.now(), lastTs + 1);
  lastTs = ts;
  const f = state.fix;
  const bat = battery ? Math.round(battery.level * 100) : undefined;
  const { point, generated } = await db.addPoint((seq) => JSON.parse(JSON.stringify(
    { seq, ts, lat: f.lat, lon: f.lon, acc: f.acc, spd: f.spd, hdg: f.hdg, alt: f.alt, bat, duty: d, sentAt: 0 })));
  state.generated = generated;
  if (publish(top('hb'), wire(point))) {
    point.sentAt = Date.now();
    await db.put('points', point);
  }
  await counts();
}

/** A stored point as sent: without the phone's bookkeeping. */
function wire(p) {
  const { sentAt, ...rest } = p;
  return rest;
}

/** Goes on or off duty; off sends one last point saying so, then stops locating. */
export async function setDuty(on) {
  state.duty = on ? 'on' : 'off';
  await db.set('duty', state.duty);
  if (on) {
    track(true);
    nextBeat = 0;
    if (globalThis.Notification?.permission === 'default') Notification.requestPermission().catch(() => {});
  } else {
    await beat('off');
    track(false);
  }
  changed();
}

/** Sets the heartbeat interval in seconds (from the provisioning link or the settings). */
export async function setInterval_(s) {
  state.interval = Math.min(3600, Math.max(1, Math.round(s)));
  await db.set('interval', state.interval);
  nextBeat = 0;
  changed();
}

/** Sends again what is unconfirmed: everything after a reconnect, else what waited too long. */
async function resend(all = false) {
  if (!connected) return;
  const now = Date.now();
  const due = (at) => all || now - at >= RESEND_MS;
  const points = (await db.all('points')).filter((p) => due(p.sentAt));
  for (let i = 0; i < points.length; i += MAX_BACKLOG) {
    const batch = points.slice(i, i + MAX_BACKLOG);
    if (!publish(top('hb'), batch.map(wire))) return;
    for (const p of batch) { p.sentAt = now; await db.put('points', p); }
  }
  for (const m of await db.all('outbox')) {
    if (!due(m.sentAt)) continue;
    if (!publish(m.topic, m.body)) return;
    m.sentAt = now;
    await db.put('outbox', m);
  }
  for (const u of state.uploads) {
    if ((u.state === 'uploading' || u.state === 'queued') && !uploading.has(u.evid) && now - (u.sentAt ?? 0) > 20_000) {
      u.metasOut = 0;
      sendMeta(u);
    }
  }
}

/** Keeps a message until the platform acknowledges `key`, and sends it now if connected. */
async function keep(key, topic, body) {
  const m = { key, topic, body, sentAt: 0 };
  if (publish(topic, body)) m.sentAt = Date.now();
  await db.put('outbox', m);
  await counts();
}

// --- the inbox ------------------------------------------------------------------------------

async function onMessage(topic, payload) {
  const text = new TextDecoder().decode(payload);
  const body = text ? JSON.parse(text) : null;
  if (topic === 'jd/v1/platform/key') {
    state.key = body;
    for (const u of state.uploads) if (u.receipt && u.verified !== true) await checkReceipt(u);
    changed();
    return;
  }
  const kind = topic.slice(top('inbox/').length);
  if (kind === 'ack') {
    if (Array.isArray(body.hb_seq)) await db.confirmPoints(body.hb_seq);
    if (body.report) {
      await db.del('outbox', `report:${body.report}`);
      const r = state.reports.find((x) => x.id === body.report);
      if (r) { r.acked = true; await db.set('reports', state.reports); }
    }
    if (body.asg && body.status) await db.del('outbox', `asg:${body.asg}:${body.status}`);
    await counts();
  } else if (kind === 'assignment') {
    onOffer(body);
  } else if (kind === 'receipt') {
    await onReceipt(body);
  } else if (kind === 'lookup') {
    state.lookups.set(body.corr, body);
    changed();
  } else if (kind === 'error') {
    const m = /\/asg\/([^/]+)$/.exec(body.topic ?? '');
    if (m) {
      for (const o of await db.all('outbox')) if (o.key.startsWith(`asg:${m[1]}:`)) await db.del('outbox', o.key);
      if (state.job?.id === m[1]) await setJob(null);
      if (state.offer?.assignment_id === m[1]) { state.offer = null; stopRinging(); }
      state.notice = `${body.error}`;
    } else if (/\/report$/.test(body.topic ?? '')) {
      state.notice = body.error;
    } else {
      state.notice = body.error;
    }
    await counts();
  } else if (kind === 'notice') {
    state.notice = typeof body === 'string' ? body : body?.text ?? JSON.stringify(body);
    changed();
  }
}

// --- assignments ----------------------------------------------------------------------------

let audio = null;
function ring() {
  navigator.vibrate?.([600, 300, 600, 300, 600]);
  try {
    audio = audio ?? new AudioContext();
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.frequency.value = 880;
    g.gain.setValueAtTime(0.0001, audio.currentTime);
    for (let i = 0; i < 6; i++) {
      g.gain.setValueAtTime(0.4, audio.currentTime + i * 0.5);
      g.gain.setValueAtTime(0.0001, audio.currentTime + i * 0.5 + 0.3);
    }
    o.connect(g).connect(audio.destination);
    o.start();
    o.stop(audio.currentTime + 3);
  } catch { /* no audio without a gesture on some phones: the vibration and the screen remain */ }
  if (globalThis.Notification?.permission === 'granted') {
    const r = state.offer?.report;
    navigator.serviceWorker?.ready
      .then((reg) => reg.showNotification('监督 · 新任务 / New assignment', { body: r ? `${r.kind}: ${r.text}` : '', tag: 'offer', renotify: true }))
      .catch(() => {});
  }
}
function stopRinging() {
  navigator.vibrate?.(0);
  clearTimeout(offerTimer);
}

function onOffer(offer) {
  if (!offer?.assignment_id || !offer.report) return;
  if (state.job && state.job.id !== offer.assignment_id) {
    answer(offer.assignment_id, 'declined', '已有任务在办');
    return;
  }
  if (state.job?.id === offer.assignment_id) return;
  state.offer = offer;
  db.set('offer', offer);
  ring();
  changed();
}

async function setJob(job) {
  state.job = job;
  await db.set('job', job);
  changed();
}

function answer(asg, status, note) {
  const body = { status, ts: Date.now(), ...(note ? { note } : {}) };
  return keep(`asg:${asg}:${status}`, top(`asg/${asg}`), body);
}

/** Accepts the offer on screen. */
export async function accept() {
  const o = state.offer;
  if (!o) return;
  state.offer = null;
  await db.set('offer', null);
  stopRinging();
  await answer(o.assignment_id, 'accepted');
  await setJob({ id: o.assignment_id, report: o.report, stage: 'accepted' });
  nextBeat = 0;
}

/** Declines the offer on screen with a reason. */
export async function decline(reason) {
  const o = state.offer;
  if (!o) return;
  state.offer = null;
  await db.set('offer', null);
  stopRinging();
  await answer(o.assignment_id, 'declined', reason);
  changed();
}

/** Says the inspector is on site. */
export async function arrived() {
  if (!state.job) return;
  await answer(state.job.id, 'arrived');
  await setJob({ ...state.job, stage: 'arrived' });
}

/** Completes the job with a note. */
export async function complete(note) {
  if (!state.job) return;
  await answer(state.job.id, 'completed', note || undefined);
  await setJob(null);
  nextBeat = 0;
}

/** Great-circle distance in metres. */
export function distance(a, b) {
  const R = 6_371_000;
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLon = (b.lon - a.lon) * rad;
  const x = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * R * Math.asin(Math.sqrt(x));
}

// --- reports and look-ups -------------------------------------------------------------------

/** Sends a field report from where the phone is; its photos follow as evidence. */
export async function report(kind, text, plate, files) {
  if (!state.fix) throw new Error('need_fix');
  const r = { id: `r${ulid()}`, kind, text, lat: state.fix.lat, lon: state.fix.lon, ts: Date.now(), ...(plate ? { plate } : {}) };
  // Listed before it is sent, so an acknowledgement arriving at once finds it to mark.
  state.reports.unshift({ id: r.id, kind, text, ts: r.ts, acked: false });
  state.reports = state.reports.slice(0, 20);
  await db.set('reports', state.reports);
  await keep(`report:${r.id}`, top('report'), r);
  for (const f of files) await addEvidence(f, r.id);
  changed();
  return r.id;
}

/** Asks the registries; the answer arrives in `state.lookups` under the returned corr. */
export function lookup(kind, q) {
  const corr = `c${ulid()}`;
  const body = { corr, kind, q, ...(state.fix ? { lat: state.fix.lat, lon: state.fix.lon } : {}) };
  if (!publish(top('lookup'), body)) throw new Error('offline');
  return corr;
}

// --- evidence -------------------------------------------------------------------------------

/** Hashes a photo or video (in slices, never whole in memory), keeps it and starts its upload. */
export async function addEvidence(file, reportId) {
  const size = file.size;
  if (!size) throw new Error('empty file');
  const h = sha256.create();
  for (let off = 0; off < size; off += 4 << 20) {
    h.update(new Uint8Array(await file.slice(off, off + (4 << 20)).arrayBuffer()));
  }
  const mime = MIME.test((file.type || '').toLowerCase()) ? file.type.toLowerCase() : 'image/jpeg';
  const meta = {
    sha256: hex(h.digest()), size, mime, captured_at: Date.now(),
    ...(state.fix ? { lat: state.fix.lat, lon: state.fix.lon } : {}),
    ...(reportId ? { report_id: reportId } : {}),
    chunk_size: CHUNK, chunks: Math.ceil(size / CHUNK),
  };
  const u = { evid: ulid(), meta, blob: file, name: file.name || 'photo', state: 'queued', missing: null,
    receipt: null, verified: null, error: null, createdAt: Date.now(), sentAt: 0, sent: 0 };
  await db.put('uploads', u);
  state.uploads.push(u);
  changed();
  if (connected) { u.metasOut = 0; sendMeta(u); pump(u); }
  return u.evid;
}

function save(u) {
  const { metasOut, ...rec } = u;
  return db.put('uploads', rec);
}

function sendMeta(u) {
  if (publish(top(`ev/${u.evid}/meta`), u.meta)) {
    u.metasOut = (u.metasOut ?? 0) + 1;
    u.sentAt = Date.now();
  }
}

/** Sends the chunks still missing (all of them the first time), then `meta`, whose answer
 * lists what did not arrive. One pump per item; stops when the connection goes. */
async function pump(u) {
  if (!connected || uploading.has(u.evid) || u.state === 'stored' || u.state === 'rejected') return;
  uploading.add(u.evid);
  try {
    u.state = 'uploading';
    const which = u.missing ?? Array.from({ length: u.meta.chunks }, (_, i) => i);
    for (const [i, n] of which.entries()) {
      if (!connected || !client) return;
      const c = client;
      const bytes = new Uint8Array(await u.blob.slice(n * CHUNK, (n + 1) * CHUNK).arrayBuffer());
      await c.publishAsync(top(`ev/${u.evid}/c/${n}`), bytes, { qos: 1 });
      u.sent = Math.max(u.sent ?? 0, i + 1);
      u.sentAt = Date.now();
      changed();
    }
    u.missing = null;
    sendMeta(u);
    await save(u);
  } catch (e) {
    console.warn('upload interrupted', u.evid, e);
  } finally {
    uploading.delete(u.evid);
  }
}

async function onReceipt(r) {
  const u = state.uploads.find((x) => x.evid === r.evid);
  if (!u) return;
  if (r.status === 'stored') {
    u.state = 'stored';
    u.receipt = r;
    await checkReceipt(u);
  } else if (r.status === 'rejected') {
    u.state = 'rejected';
    u.error = r.error;
  } else if (r.status === 'partial') {
    u.metasOut = Math.max(0, (u.metasOut ?? 1) - 1);
    u.sentAt = Date.now();
    if (u.metasOut === 0 && Array.isArray(r.missing) && r.missing.length) {
      u.missing = r.missing;
      pump(u);
    }
  }
  await save(u);
  changed();
}

/** Checks a stored receipt's Ed25519 signature against the platform key (WebCrypto). */
async function checkReceipt(u) {
  const r = u.receipt;
  if (!r || !state.key?.public_key) { u.verified = null; return; }
  // The canonical JSON of DESIGN §3: keys sorted, no whitespace.
  const signed = JSON.stringify({ evid: r.evid, ledger_hash: r.ledger_hash, ledger_seq: r.ledger_seq,
    received_at: r.received_at, sha256: r.sha256, size: r.size });
  try {
    const key = await crypto.subtle.importKey('raw', unhex(state.key.public_key), { name: 'Ed25519' }, false, ['verify']);
    const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, unhex(r.sig), new TextEncoder().encode(signed));
    u.verified = ok && r.sha256 === u.meta.sha256 && r.size === u.meta.size;
  } catch (e) {
    console.warn('cannot verify a receipt here', e);
    u.verified = null;
  }
  u.keyId = state.key.key_id;
  await save(u);
  changed();
}

/** Logout: the connection ends and everything on the phone is wiped. */
export async function logout() {
  drop('logout');
  track(false);
  await db.wipe();
  state.creds = null;
}

// For tests and the curious: the live state in the console.
window.__app = { state, resend: () => resend(true) };
