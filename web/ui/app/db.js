// The phone's durable state in IndexedDB, so nothing waiting to be sent is lost to a reload, a
// crash or the phone killing the tab: credentials and counters (`kv`), heartbeats not yet
// confirmed by `hb_seq` (`points`, keyed by seq), reports and assignment statuses not yet
// acknowledged (`outbox`), and evidence with its upload state and receipt (`uploads`).

const NAME = 'jiandu-app';
const VERSION = 1;
let opened = null;

function req(r) {
  return new Promise((ok, no) => {
    r.onsuccess = () => ok(r.result);
    r.onerror = () => no(r.error);
  });
}

/** Opens (and on first use creates) the database. */
export function open() {
  if (!opened) {
    opened = new Promise((ok, no) => {
      const r = indexedDB.open(NAME, VERSION);
      r.onupgradeneeded = () => {
        const db = r.result;
        db.createObjectStore('kv');
        db.createObjectStore('points', { keyPath: 'seq' });
        db.createObjectStore('outbox', { keyPath: 'key' });
        db.createObjectStore('uploads', { keyPath: 'evid' });
      };
      r.onsuccess = () => ok(r.result);
      r.onerror = () => no(r.error);
    });
  }
  return opened;
}

async function store(name, mode = 'readonly') {
  const db = await open();
  return db.transaction(name, mode).objectStore(name);
}

/** One value of `kv`. */
export async function get(key) {
  return req((await store('kv')).get(key));
}

/** Sets one value of `kv`. */
export async function set(key, value) {
  return req((await store('kv', 'readwrite')).put(value, key));
}

/** Every record of a store, in key order. */
export async function all(name) {
  return req((await store(name)).getAll());
}

/** How many records a store holds. */
export async function count(name) {
  return req((await store(name)).count());
}

/** Writes a record (keyed by its keyPath). */
export async function put(name, value) {
  return req((await store(name, 'readwrite')).put(value));
}

/** Deletes one record by key. */
export async function del(name, key) {
  return req((await store(name, 'readwrite')).delete(key));
}

/** Deletes the points whose seq lies in one of the inclusive ranges; how many were held. */
export async function confirmPoints(ranges) {
  const db = await open();
  const tx = db.transaction('points', 'readwrite');
  const points = tx.objectStore('points');
  let n = 0;
  for (const [from, to] of ranges) {
    if (!(Number.isSafeInteger(from) && Number.isSafeInteger(to) && from <= to)) continue;
    const range = IDBKeyRange.bound(from, to);
    n += await req(points.count(range));
    points.delete(range);
  }
  await new Promise((ok, no) => { tx.oncomplete = ok; tx.onerror = () => no(tx.error); });
  return n;
}

/** Adds the next heartbeat with its seq in one transaction with the counters, so a reload never
 * reuses a seq nor loses a count. `make(seq)` builds the point; returns it with the number of
 * points made so far. */
export async function addPoint(make) {
  const db = await open();
  const tx = db.transaction(['kv', 'points'], 'readwrite');
  const kv = tx.objectStore('kv');
  const last = (await req(kv.get('lastSeq'))) ?? Date.now() * 1000;
  const seq = last + 1;
  // Counted in the same transaction as the point, so a reload between the two cannot lose one.
  const generated = ((await req(kv.get('generated'))) ?? 0) + 1;
  const point = make(seq);
  kv.put(seq, 'lastSeq');
  kv.put(generated, 'generated');
  tx.objectStore('points').put(point);
  await new Promise((ok, no) => { tx.oncomplete = ok; tx.onerror = () => no(tx.error); });
  return { point, generated };
}

/** Logout: everything this phone held (credentials, queues, evidence) is deleted. */
export async function wipe() {
  if (opened) (await opened).close();
  opened = null;
  await new Promise((ok) => {
    const r = indexedDB.deleteDatabase(NAME);
    r.onsuccess = r.onerror = r.onblocked = () => ok();
  });
}
