// What every page shares: DOM building without innerHTML (so no report text can inject markup),
// the API client with the session's CSRF token, the one live event stream, and formatting.
import { t } from './i18n.js';

export const session = { user: null, csrf: null, ui: null };

/** Creates an element: h('div', {class: 'x', onclick: f}, child, 'text', …). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An API error with the server's `{error:{code,message,field}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = body?.error ?? {};
    super(e.field ? `${e.field}: ${e.message}` : e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
  }
}

/** Calls `/api/v1{path}`; sends the CSRF token on anything but GET; throws ApiError. */
export async function api(method, path, body) {
  // X-Requested-With: the server then leaves out WWW-Authenticate, so no Basic-auth dialog pops up.
  const headers = { Accept: 'application/json', 'X-Requested-With': 'jiandu-web' };
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(`/api/v1${path}`, {
    method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    const err = new ApiError(resp.status, json);
    if (resp.status === 401 && path !== '/session') {
      session.user = null;
      location.hash = '#/login';
    }
    throw err;
  }
  return json;
}

const listeners = new Set();
let source = null;

/** Opens the SSE stream once; the browser reconnects by itself and resumes with Last-Event-ID. */
export function openEvents(onState) {
  if (source) return;
  source = new EventSource('/api/v1/events', { withCredentials: true });
  const deliver = (kind) => (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (kind === 'position') msg = { kind: 'position', type: 'position', ...msg };
    for (const f of listeners) f(msg);
  };
  source.onmessage = deliver('outbox');
  source.addEventListener('position', deliver('position'));
  source.onopen = () => onState?.(true);
  source.onerror = () => onState?.(false);
}

/** Closes the stream (logout). */
export function closeEvents() {
  source?.close();
  source = null;
}

/** Subscribes to live events until the returned function is called. */
export function onEvent(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

/** Epoch ms → local date and time. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Metres → "850 m" / "3.2 km". */
export function fmtDist(m) {
  return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(1)} km`;
}

/** Great-circle distance in metres. */
export function haversine(lat1, lon1, lat2, lon2) {
  const r = (d) => (d * Math.PI) / 180;
  const a = Math.sin(r(lat2 - lat1) / 2) ** 2 + Math.cos(r(lat1)) * Math.cos(r(lat2)) * Math.sin(r(lon2 - lon1) / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** A table from rows and [header, cell(row)] columns. */
export function table(cols, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, cols.map(([head]) => h('th', {}, head)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, cols.map(([, cell]) => h('td', {}, cell(r)))))));
}

/** A message box for an error. */
export function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, `${t('error')}: ${e.message ?? e}`);
}

/** Every device, paging through `/devices` 5000 at a time. */
export async function allDevices() {
  const out = [];
  let after = '';
  for (;;) {
    const page = await api('GET', `/devices?limit=5000&after=${encodeURIComponent(after)}`);
    out.push(...page.items);
    if (!page.next) return out;
    after = page.next;
  }
}

/** The display state of a device after a position sample (as `api/devices.rs` computes it). */
export function stateFromDuty(duty) {
  return duty === 'busy' ? 'busy' : duty === 'off' ? 'off_duty' : 'available';
}

export const STATE_COLOURS = {
  available: '#16a34a', busy: '#f59e0b', off_duty: '#64748b', offline: '#1e293b', stale: '#a855f7',
  unknown: '#cbd5e1', revoked: '#ef4444',
};
