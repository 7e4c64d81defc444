// The field app's screens: set-up (from the admin's QR link or by hand), duty and assignments,
// field reports, look-ups, evidence with its gallery, settings. Everything it sends and receives
// goes through phone.js (the MQTT contract); this file only draws and reacts to touches. DOM is
// built with `h` (no innerHTML), so nothing the platform or an inspector writes can inject markup.
import './style.css';
import { t, lang } from './i18n.js';
import * as db from './db.js';
import * as phone from './phone.js';

const { state } = phone;

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const root = document.getElementById('app');
const fmtTime = (ms) => new Date(ms).toLocaleTimeString(lang === 'en' ? 'en-GB' : 'zh-CN');
/** A report kind in words where the app knows it (`official-car` → 公车私用), else as sent. */
const kindName = (k) => { const w = t(`kind_${String(k).replace(/-/g, '_')}`); return w.startsWith('kind_') ? k : w; };
const metres = (m) => (m >= 1000 ? `${(m / 1000).toFixed(1)} km` : `${Math.round(m)} m`);

/** Reads the provisioning fragment `#d=<device>&t=<token>[&i=<seconds>]`, stores it on the
 * phone and removes it from the address bar (and so from history). */
async function provision() {
  const frag = new URLSearchParams(location.hash.slice(1));
  const device = frag.get('d');
  const token = frag.get('t');
  if (device && token) {
    await db.set('creds', { device, token });
    const i = Number(frag.get('i'));
    if (i > 0) await db.set('interval', i);
    history.replaceState(null, '', `${location.pathname}${location.search}#/duty`);
  }
  return db.get('creds');
}

function setup() {
  const form = h('form', { id: 'setup-form', class: 'card' },
    h('h1', {}, t('setup')), h('p', {}, t('setup_hint')),
    h('label', {}, t('device'), h('input', { id: 'setup-device', name: 'device', required: true, autocomplete: 'off', 'aria-label': t('device') })),
    h('label', {}, t('token'), h('input', { id: 'setup-token', name: 'token', type: 'password', required: true, autocomplete: 'off', 'aria-label': t('token') })),
    h('button', { type: 'submit', class: 'big primary' }, t('save')),
    h('p', { class: 'lang' }, h('a', { href: t('lang_link') }, t('language'))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(form));
    await db.set('creds', { device: d.device.trim(), token: d.token.trim() });
    location.hash = '#/duty';
    location.reload();
  });
  root.replaceChildren(h('main', { class: 'setup' }, form));
}

// --- screens ------------------------------------------------------------------------------

const TABS = [['duty', 'tab_duty'], ['report', 'tab_report'], ['lookup', 'tab_lookup'], ['evidence', 'tab_evidence'], ['settings', 'tab_settings']];

function statusBar() {
  const s = state.status;
  const waiting = state.queuedPoints + state.queuedMessages;
  return h('header', { class: 'status' },
    h('span', { id: 'conn', class: `conn ${s}`, 'data-state': s, role: 'status' }, t(s)),
    h('span', { id: 'queue', 'data-points': state.queuedPoints, 'data-messages': state.queuedMessages },
      `${t('waiting')}: ${state.queuedPoints} ${t('points')} · ${state.queuedMessages} ${t('messages')}`),
    h('span', { id: 'duty-state', class: `duty ${phone.duty()}` }, t(`duty_${phone.duty()}`)),
    waiting === 0 ? null : h('span', { class: 'dot' }));
}

/** A small map without tiles: the phone and the place, fitted, with the distance. */
function miniMap(me, place) {
  const W = 320, H = 160, pad = 24;
  const pts = [place, ...(me ? [me] : [])];
  const lat0 = pts.reduce((a, p) => a + p.lat, 0) / pts.length;
  const kx = Math.cos(lat0 * Math.PI / 180);
  const xs = pts.map((p) => p.lon * kx), ys = pts.map((p) => p.lat);
  const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), 0.002);
  const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
  const scale = Math.min(W - 2 * pad, H - 2 * pad) / span;
  const px = (p) => [W / 2 + (p.lon * kx - cx) * scale, H / 2 - (p.lat - cy) * scale];
  const ns = 'http://www.w3.org/2000/svg';
  const el = (tag, a) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); return e; };
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'minimap', role: 'img', 'aria-label': t('distance') });
  svg.append(el('rect', { x: 0, y: 0, width: W, height: H, fill: '#eef2f3' }));
  const [tx, ty] = px(place);
  if (me) {
    const [mx, my] = px(me);
    svg.append(el('line', { x1: mx, y1: my, x2: tx, y2: ty, stroke: '#607d8b', 'stroke-dasharray': '6 4', 'stroke-width': 2 }));
    svg.append(el('circle', { cx: mx, cy: my, r: 8, fill: '#1e88e5', stroke: '#fff', 'stroke-width': 3 }));
  }
  svg.append(el('circle', { cx: tx, cy: ty, r: 10, fill: '#d32f2f', stroke: '#fff', 'stroke-width': 3 }));
  return svg;
}

function offerCard() {
  const o = state.offer;
  if (!o) return null;
  const me = state.fix;
  const d = me ? phone.distance(me, o.report) : o.distance_m;
  const left = Math.max(0, Math.round((o.respond_by - Date.now()) / 1000));
  const reason = h('select', { id: 'decline-reason', 'aria-label': t('decline_reason') },
    ['reason_busy', 'reason_far', 'reason_other'].map((k) => h('option', { value: t(k) }, t(k))));
  return h('section', { id: 'offer', class: 'card offer', 'aria-live': 'assertive' },
    h('h2', {}, t('offer')),
    h('p', { class: 'kind' }, kindName(o.report.kind)), h('p', { class: 'text' }, o.report.text),
    miniMap(me, o.report),
    h('p', {}, `${t('distance')}: `, h('strong', { id: 'offer-distance' }, metres(d))),
    h('p', { id: 'offer-countdown', class: left < 15 ? 'urgent' : '' }, o.expired ? t('expired') : `${t('respond_in')} ${left} ${t('seconds')}`),
    h('div', { class: 'row' },
      h('button', { id: 'accept', class: 'big primary', disabled: o.expired, onclick: () => phone.accept() }, t('accept')),
      h('button', { id: 'decline', class: 'big', onclick: () => phone.decline(reason.value) }, t('decline'))),
    h('label', {}, t('decline_reason'), reason));
}

function jobCard() {
  const j = state.job;
  if (!j) return state.offer ? null : h('p', { class: 'muted', id: 'no-job' }, t('no_job'));
  const note = h('textarea', { id: 'complete-note', 'aria-label': t('note'), rows: 2, maxlength: 4000 });
  return h('section', { id: 'job', class: 'card job', 'data-stage': j.stage },
    h('h2', {}, t('job')), h('p', { class: 'kind' }, kindName(j.report.kind)), h('p', {}, j.report.text),
    miniMap(state.fix, j.report),
    state.fix ? h('p', {}, `${t('distance')}: ${metres(phone.distance(state.fix, j.report))}`) : null,
    h('p', { class: 'stage' }, t(j.stage === 'arrived' ? 'job_arrived' : 'job_accepted')),
    j.stage === 'accepted'
      ? h('button', { id: 'arrived', class: 'big primary', onclick: () => phone.arrived() }, t('arrived'))
      : [h('label', {}, t('note'), note),
        h('button', { id: 'complete', class: 'big primary', onclick: () => phone.complete(note.value.trim()) }, t('complete'))]);
}

function dutyScreen() {
  const on = state.duty !== 'off';
  const f = state.fix;
  return [
    h('button', { id: 'duty-toggle', class: `big ${on ? '' : 'primary'}`, onclick: () => phone.setDuty(!on) }, t(on ? 'go_off_duty' : 'go_on_duty')),
    h('p', { id: 'fix', class: 'muted' }, f ? `${t('fix')}: ${f.lat.toFixed(5)}, ${f.lon.toFixed(5)} (${t('accuracy')} ${f.acc ?? '?'} m) · ${fmtTime(f.at)}` : (state.fixError || t('no_fix'))),
    state.notice ? h('p', { class: 'notice', role: 'alert' }, state.notice) : null,
    offerCard(), jobCard(),
  ];
}

const KINDS = ['banquet', 'official_car', 'gift', 'other'];
function reportScreen() {
  const files = h('input', { id: 'report-photos', type: 'file', accept: 'image/*,video/*', capture: 'environment', multiple: true, 'aria-label': t('photos') });
  const out = h('p', { id: 'report-result', role: 'status' });
  const form = h('form', { id: 'report-form', class: 'card' },
    h('label', {}, t('kind'), h('select', { name: 'kind', id: 'report-kind', 'aria-label': t('kind') },
      KINDS.map((k) => h('option', { value: k.replace('_', '-') }, t(`kind_${k}`))))),
    h('label', {}, t('text'), h('textarea', { name: 'text', id: 'report-text', rows: 4, maxlength: 4000, required: true, 'aria-label': t('text') })),
    h('label', {}, t('plate'), h('input', { name: 'plate', id: 'report-plate', maxlength: 16, autocomplete: 'off', 'aria-label': t('plate') })),
    h('label', {}, t('photos'), files),
    h('button', { type: 'submit', id: 'report-send', class: 'big primary' }, t('report')), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(form));
    try {
      const id = await phone.report(d.kind, d.text.trim(), d.plate.trim(), Array.from(files.files));
      out.textContent = `${t('report_sent')} (${id})`;
      form.reset();
    } catch (ex) {
      out.textContent = t(ex.message);
    }
  });
  const list = () => h('ul', { id: 'reports', class: 'list' }, state.reports.map((r) =>
    h('li', { 'data-id': r.id, 'data-acked': String(r.acked) }, `${fmtTime(r.ts)} ${r.text.slice(0, 40)} · `, r.acked ? t('report_acked') : t('report_sent'))));
  return { static: form, live: list };
}

function lookupResult(answer, query) {
  if (!answer) return null;
  if (answer.error) return h('p', { class: 'notice' }, answer.error);
  const kv = (obj) => h('dl', {}, Object.entries(obj ?? {}).flatMap(([k, v]) => [h('dt', {}, k === 'powers' ? t('powers') : k),
    h('dd', {}, Array.isArray(v) ? h('ul', {}, v.map((x) => h('li', {}, typeof x === 'object' ? JSON.stringify(x) : String(x))))
      : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v))]));
  return h('section', { id: 'lookup-answer', class: 'card', 'data-found': String(Boolean(answer.found)), 'data-q': query },
    h('h3', {}, answer.found ? t('found') : t('not_found')),
    answer.result ? kv(answer.result) : null,
    answer.candidates?.length ? [h('h4', {}, t('candidates')), h('ul', { id: 'lookup-candidates' },
      answer.candidates.map((c) => h('li', {}, typeof c === 'object' ? (c.plate ?? c.name ?? JSON.stringify(c)) : String(c))))] : null);
}

let lastCorr = null;
let lastQuery = '';
function lookupScreen() {
  const out = h('p', { id: 'lookup-status', role: 'status' });
  const form = h('form', { id: 'lookup-form', class: 'card' },
    h('label', {}, t('lookup_kind'), h('select', { name: 'kind', id: 'lookup-kind', 'aria-label': t('lookup_kind') },
      ['vehicle', 'person', 'department'].map((k) => h('option', { value: k }, t(k))))),
    h('label', {}, t('query'), h('input', { name: 'q', id: 'lookup-q', required: true, maxlength: 200, autocomplete: 'off', 'aria-label': t('query') })),
    h('button', { type: 'submit', id: 'lookup-send', class: 'big primary' }, t('lookup')), out);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(form));
    try {
      lastCorr = phone.lookup(d.kind, d.q.trim());
      lastQuery = `${d.kind}:${d.q.trim()}`;
      out.textContent = '…';
    } catch {
      out.textContent = t('offline');
    }
  });
  const live = () => {
    const answer = lastCorr && state.lookups.get(lastCorr);
    if (answer) out.textContent = '';
    return lookupResult(answer, lastQuery);
  };
  return { static: form, live };
}

function evidenceScreen() {
  const input = h('input', { id: 'evidence-file', type: 'file', accept: 'image/*,video/*', capture: 'environment', class: 'hidden-file' });
  input.addEventListener('change', async () => {
    for (const f of Array.from(input.files)) await phone.addEvidence(f, state.job?.report?.id);
    input.value = '';
  });
  // The file input is the control (a button to assistive technology, named by its label);
  // the label is its large visible face.
  const take = h('label', { class: 'big primary button', id: 'take-photo' }, t('take_photo'), input);
  const gallery = () => h('ul', { id: 'gallery', class: 'gallery' }, state.uploads.slice().reverse().map((u) => {
    const img = u.meta.mime.startsWith('image/') && u.blob ? h('img', { src: URL.createObjectURL(u.blob), alt: u.name, onload: (e) => URL.revokeObjectURL(e.target.src) }) : h('span', { class: 'media' }, u.meta.mime);
    const sig = u.state !== 'stored' ? null : u.verified === true ? h('span', { class: 'ok sig' }, `✔ ${t('sig_ok')}`)
      : u.verified === false ? h('span', { class: 'bad sig' }, `✘ ${t('sig_bad')}`) : h('span', { class: 'sig' }, t('sig_unknown'));
    return h('li', { class: `item ${u.state}`, 'data-evid': u.evid, 'data-state': u.state, 'data-verified': String(u.verified) },
      img, h('div', {},
        h('strong', {}, t(`st_${u.state}`)),
        u.state === 'uploading' ? ` ${u.sent ?? 0}/${u.meta.chunks}` : null,
        u.error ? h('p', { class: 'bad' }, u.error) : null,
        u.receipt ? h('p', { class: 'receipt' }, `${t('receipt')}: ${t('ledger')} ${u.receipt.ledger_seq} · sha256 ${u.receipt.sha256.slice(0, 16)}… · sig ${u.receipt.sig.slice(0, 16)}…`) : null,
        sig));
  }));
  return { static: h('div', { class: 'card' }, h('p', {}, t('evidence_hint')), take), live: () => [h('h2', {}, t('gallery')), gallery()] };
}

function settingsScreen() {
  const interval = h('input', { id: 'interval', type: 'number', min: 1, max: 3600, value: state.interval, 'aria-label': t('interval') });
  interval.addEventListener('change', () => phone.setInterval_(Number(interval.value)));
  return {
    static: h('div', { class: 'card' },
      h('p', {}, `${t('device')}: `, h('code', { id: 'device-id' }, state.creds?.device ?? '')),
      h('label', {}, t('interval'), interval),
      h('p', {}, h('a', { href: t('lang_link'), id: 'lang-switch', class: 'button big' }, t('language'))),
      globalThis.Notification ? h('button', { class: 'big', id: 'notify', onclick: () => Notification.requestPermission() }, t('notifications')) : null,
      h('p', { class: 'muted' }, t('screen_note')),
      h('button', { id: 'logout', class: 'big danger', onclick: async () => {
        if (!confirm(t('logout_confirm'))) return;
        await phone.logout();
        location.replace(`${location.pathname}${location.search}`);
      } }, t('logout'))),
    live: () => null,
  };
}

const SCREENS = { duty: () => ({ static: null, live: dutyScreen }), report: reportScreen, lookup: lookupScreen, evidence: evidenceScreen, settings: settingsScreen };
let current = null;
let liveFn = () => null;
let live = null;
let header = null;

function route() {
  const name = (location.hash.match(/^#\/(\w+)/) ?? [])[1];
  const screen = SCREENS[name] ? name : 'duty';
  const built = SCREENS[screen]();
  current = screen;
  header = h('div', {});
  live = h('div', { class: 'live' });
  const nav = h('nav', { class: 'tabs', 'aria-label': t('title') }, TABS.map(([k, label]) =>
    h('a', { href: `#/${k}`, class: k === screen ? 'active' : '', 'aria-current': k === screen ? 'page' : null, id: `tab-${k}` }, t(label))));
  root.replaceChildren(header, h('main', { id: `screen-${screen}`, 'data-screen': screen }, built.static, live), nav);
  liveFn = built.live;
  draw();
}

function draw() {
  if (!current) return;
  header.replaceChildren(statusBar());
  // Keep focus and typing on the live part's inputs (the note) across redraws.
  const active = document.activeElement;
  const keep = active && live.contains(active) && active.id ? { id: active.id, value: active.value } : null;
  const note = live.querySelector('#complete-note')?.value;
  const reason = live.querySelector('#decline-reason')?.value;
  live.replaceChildren(...[liveFn()].flat().filter(Boolean));
  if (note) live.querySelector('#complete-note') && (live.querySelector('#complete-note').value = note);
  if (reason) live.querySelector('#decline-reason') && (live.querySelector('#decline-reason').value = reason);
  if (keep) document.getElementById(keep.id)?.focus();
}

async function main() {
  document.title = t('title');
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/app/sw.js', { scope: '/app/' }).catch((e) => console.warn('service worker', e));
  const creds = await provision();
  if (!creds) { setup(); return; }
  window.addEventListener('hashchange', route);
  phone.onChange(draw);
  await phone.start(creds);
  route();
}

main();
