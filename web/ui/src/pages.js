// The desk's pages besides the map: reports queue and report page (dispatch, timeline,
// evidence), look-ups, the audit log, administration, and the API description.
import maplibregl from 'maplibre-gl';
import QRCode from 'qrcode';
import { t } from './i18n.js';
import { h, api, table, errorBox, fmtTime, fmtDist, haversine, onEvent, allDevices, session, STATE_COLOURS } from './core.js';
import { baseStyle, display, fitTo, fromDisplay } from './map.js';

const QUEUE = ['', 'new', 'dispatching', 'unassigned', 'assigned', 'completed', 'cancelled'];

/** Reports queue with a status filter and a form for a new report. */
export async function reportsPage(root, params) {
  const status = params.get('status') || '';
  const canDispatch = ['dispatcher', 'admin'].includes(session.user.role);
  const tabs = h('nav', { class: 'tabs' }, QUEUE.map((s) => h('a', {
    href: `#/reports${s ? `?status=${s}` : ''}`, class: s === status ? 'active' : '', 'data-status': s || 'all',
  }, t(s || 'all'))));
  const listBox = h('div', { id: 'report-list' }, t('loading'));
  const form = canDispatch ? newReportForm() : null;
  root.append(h('div', { class: 'page' }, h('h2', {}, t('reports')), form, tabs, listBox));
  let next = null;
  const rows = [];
  async function load(after) {
    const q = new URLSearchParams({ limit: '50' });
    if (status) q.set('status', status);
    if (after) q.set('after', after);
    const page = await api('GET', `/reports?${q}`);
    rows.push(...page.items);
    next = page.next;
    render();
  }
  function render() {
    listBox.replaceChildren(
      table([
        [t('time'), (r) => fmtTime(r.ts)],
        [t('kind'), (r) => r.kind],
        [t('text'), (r) => h('a', { href: `#/reports/${encodeURIComponent(r.id)}`, class: 'report-link' }, r.text || r.id)],
        [t('status'), (r) => h('span', { class: `badge s-${r.status}` }, t(r.status))],
        [t('origin'), (r) => `${r.source} · ${r.origin}`],
      ], rows, { class: 'list', id: 'reports-table' }),
      // replaceChildren would print a null as the text "null".
      ...(next ? [h('button', { onclick: () => load(next) }, t('more'))] : []));
  }
  // Listen before the first load, so a report that changes while it loads still refreshes it.
  let pending = null;
  const off = onEvent((ev) => {
    if (ev.kind === 'report' || ev.kind === 'assignment' || ev.kind === 'alarm') {
      clearTimeout(pending);
      pending = setTimeout(() => {
        rows.length = 0;
        load().catch(() => {});
      }, 300);
    }
  });
  try {
    await load();
  } catch (e) {
    listBox.replaceChildren(errorBox(e));
  }
  return () => { off(); clearTimeout(pending); };
}

function newReportForm() {
  const err = h('div');
  const f = h('form', { class: 'card form-grid', id: 'new-report' },
    h('h3', {}, t('create_report')),
    h('label', {}, t('kind'), h('input', { name: 'kind', required: true, value: 'tip' })),
    h('label', {}, t('text'), h('input', { name: 'text', required: true })),
    h('label', {}, t('lat'), h('input', { name: 'lat', required: true, inputmode: 'decimal' })),
    h('label', {}, t('lon'), h('input', { name: 'lon', required: true, inputmode: 'decimal' })),
    h('label', {}, t('plate'), h('input', { name: 'plate' })),
    h('button', { type: 'submit', id: 'new-report-submit' }, t('submit')), err);
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(f));
    const body = { kind: d.kind, text: d.text, lat: Number(d.lat), lon: Number(d.lon) };
    if (d.plate) body.plate = d.plate;
    try {
      const r = await api('POST', '/reports', body);
      location.hash = `#/reports/${encodeURIComponent(r.report.id)}`;
    } catch (ex) {
      err.replaceChildren(errorBox(ex));
    }
  });
  return f;
}

/** One report: details, dispatch actions, assignments, live timeline, evidence. */
export async function reportPage(root, id) {
  const canDispatch = ['dispatcher', 'admin'].includes(session.user.role);
  const box = h('div', { class: 'page report-page' }, t('loading'));
  root.append(box);
  let devices = null;
  let miniMap = null;
  let mapPlaced = null; // whether the mini map was drawn around the report's point
  let pick = null; // the desk's clicked point on the map of a report without one
  const msg = h('div', { id: 'action-message' });
  const mapBox = h('div', { class: 'mini-map', id: 'report-map' });
  let pending = null;
  const later = () => {
    clearTimeout(pending);
    pending = setTimeout(() => render().catch(() => {}), 150);
  };

  async function act(path, body) {
    msg.replaceChildren();
    try {
      await api('POST', `/reports/${encodeURIComponent(id)}/${path}`, body);
      await render();
    } catch (e) {
      msg.replaceChildren(errorBox(e));
    }
  }

  let renders = 0;
  async function render() {
    const mine = ++renders;
    const v = await api('GET', `/reports/${encodeURIComponent(id)}`);
    if (mine !== renders) return; // a newer render has started; never paint older data over it
    const r = v.report;
    const open = v.assignments.some((a) => ['offered', 'accepted', 'arrived'].includes(a.status));
    const final = ['completed', 'cancelled'].includes(r.status);
    const placed = r.lat !== null && r.lat !== undefined;
    const actions = canDispatch && !final ? h('div', { class: 'actions' },
      placed ? h('button', { id: 'dispatch-nearest', onclick: () => act(open ? 'reassign' : 'dispatch', {}) },
        open ? `${t('reassign')} → ${t('dispatch_nearest')}` : t('dispatch_nearest')) : null,
      h('button', { class: 'danger', id: 'cancel-report', onclick: () => closeReport(v) }, t('cancel_report'))) : null;
    const where = placed ? `${r.lat.toFixed(5)}, ${r.lon.toFixed(5)}`
      : `${t('no_location')} — ${t('place')}: ${v.public?.place || '—'}`;
    const nearest = h('div', { id: 'nearest' });
    // replaceChildren would print a null as the text "null".
    box.replaceChildren(...[
      h('h2', {}, `${t('report')} ${r.id}`),
      h('div', { class: 'report-head' },
        h('div', { class: 'card' },
          h('dl', {},
            h('dt', {}, t('status')), h('dd', {}, h('span', { class: `badge s-${r.status}`, id: 'report-status', 'data-status': r.status }, t(r.status))),
            h('dt', {}, t('kind')), h('dd', {}, r.kind),
            h('dt', {}, t('text')), h('dd', {}, r.text),
            h('dt', {}, t('plate')), h('dd', {}, r.plate || '—'),
            h('dt', {}, `${t('lat')}, ${t('lon')}`), h('dd', { id: placed ? 'report-point' : 'report-unlocated' }, where),
            h('dt', {}, t('time')), h('dd', {}, fmtTime(r.ts)),
            h('dt', {}, t('origin')), h('dd', {}, `${r.source} · ${r.origin}`),
            h('dt', {}, t('needs')), h('dd', {}, String(r.needs))),
          canDispatch && !final && !placed ? placeForm() : null,
          actions, msg),
        mapBox),
      v.public ? publicSection(id, v) : null,
      canDispatch && !final && placed ? h('section', {}, h('h3', {}, t('nearest_available')), nearest) : null,
      h('section', {}, h('h3', {}, t('assignments')), table([
        [t('device'), (a) => a.device_id],
        [t('status'), (a) => h('span', { class: `badge a-${a.status}` }, t(a.status))],
        [t('distance'), (a) => fmtDist(a.distance_m)],
        [t('time'), (a) => fmtTime(a.offered_at)],
        [t('actor'), (a) => a.actor],
      ], v.assignments, { class: 'list', id: 'assignments' })),
      h('section', {}, h('h3', {}, t('timeline')), h('ol', { class: 'timeline', id: 'timeline' },
        v.timeline.map((e) => h('li', { 'data-status': e.status },
          h('time', {}, fmtTime(e.ts)), ' ', h('b', {}, t(e.status)), ` · ${e.assignment_id.slice(-6)} · ${e.actor}`,
          e.note ? ` · ${e.note}` : '')))),
      h('section', {}, h('h3', {}, t('evidence')), h('div', { id: 'evidence' }, t('loading')))].filter(Boolean));
    if (miniMap && mapPlaced !== placed) {
      miniMap.remove();
      miniMap = null;
    }
    if (!miniMap) {
      mapPlaced = placed;
      if (placed) drawMap(mapBox, r);
      else drawPicker(mapBox);
    }
    if (canDispatch && !final && placed) showNearest(nearest, r);
    loadEvidence(box.querySelector('#evidence'));
  }

  /** The desk places a tip that named its place in words: a click on the map or typed degrees. */
  function placeForm() {
    const f = h('form', { id: 'locate-form', class: 'form-grid' },
      h('p', { class: 'muted' }, t('place_hint')),
      h('label', {}, t('lat'), h('input', { id: 'locate-lat', name: 'lat', required: true, inputmode: 'decimal' })),
      h('label', {}, t('lon'), h('input', { id: 'locate-lon', name: 'lon', required: true, inputmode: 'decimal' })),
      h('button', { type: 'submit', id: 'locate-submit' }, t('set_location')));
    if (pick) {
      f.querySelector('#locate-lat').value = pick[1].toFixed(6);
      f.querySelector('#locate-lon').value = pick[0].toFixed(6);
    }
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      act('location', { lat: Number(f.querySelector('#locate-lat').value), lon: Number(f.querySelector('#locate-lon').value) });
    });
    return f;
  }

  /** The map of a report without a point: where the inspectors are; a click picks the place. */
  function drawPicker(el) {
    miniMap = new maplibregl.Map({ container: el, style: baseStyle(), center: [118.3, 35.1], zoom: 9, attributionControl: false });
    miniMap.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
    const marker = new maplibregl.Marker({ color: '#dc2626' });
    miniMap.on('load', async () => {
      devices ??= await allDevices().catch(() => []);
      const at = devices.filter((d) => d.position).slice(0, 500);
      miniMap.addSource('near', { type: 'geojson', data: { type: 'FeatureCollection', features: at.map((d) => ({
        type: 'Feature', geometry: { type: 'Point', coordinates: display(d.position.lon, d.position.lat) },
        properties: { id: d.id, state: d.state } })) } });
      miniMap.addLayer({ id: 'near', type: 'circle', source: 'near', paint: {
        'circle-radius': 5, 'circle-stroke-color': '#fff', 'circle-stroke-width': 1,
        'circle-color': ['match', ['get', 'state'], ...Object.entries(STATE_COLOURS).flat(), '#999'] } });
      fitTo(miniMap, at.map((d) => display(d.position.lon, d.position.lat)), 13);
    });
    if (!canDispatch) return;
    miniMap.on('click', (e) => {
      pick = fromDisplay(e.lngLat.lng, e.lngLat.lat);
      marker.setLngLat(e.lngLat).addTo(miniMap);
      const lat = box.querySelector('#locate-lat');
      const lon = box.querySelector('#locate-lon');
      if (lat && lon) {
        lat.value = pick[1].toFixed(6);
        lon.value = pick[0].toFixed(6);
      }
    });
  }

  function drawMap(el, r) {
    miniMap = new maplibregl.Map({ container: el, style: baseStyle(), center: display(r.lon, r.lat), zoom: 13, attributionControl: false });
    miniMap.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
    new maplibregl.Marker({ color: '#dc2626' }).setLngLat(display(r.lon, r.lat)).addTo(miniMap);
    miniMap.on('load', async () => {
      devices ??= await allDevices().catch(() => []);
      const near = devices.filter((d) => d.position)
        .map((d) => ({ d, m: haversine(r.lat, r.lon, d.position.lat, d.position.lon) }))
        .sort((a, b) => a.m - b.m).slice(0, 200);
      miniMap.addSource('near', { type: 'geojson', data: { type: 'FeatureCollection', features: near.map(({ d }) => ({
        type: 'Feature', geometry: { type: 'Point', coordinates: display(d.position.lon, d.position.lat) },
        properties: { id: d.id, state: d.state } })) } });
      miniMap.addLayer({ id: 'near', type: 'circle', source: 'near', paint: {
        'circle-radius': 6, 'circle-stroke-color': '#fff', 'circle-stroke-width': 1,
        'circle-color': ['match', ['get', 'state'], ...Object.entries(STATE_COLOURS).flat(), '#999'] } });
      fitTo(miniMap, [display(r.lon, r.lat), ...near.slice(0, 5).map(({ d }) => display(d.position.lon, d.position.lat))]);
      if (canDispatch) {
        miniMap.on('click', 'near', (e) => {
          const dev = e.features?.[0]?.properties?.id;
          if (dev && confirm(`${t('dispatch_to')} ${dev}?`)) act('dispatch', { device: dev });
        });
      }
    });
  }

  // Closing a citizen's tip asks what to tell the reporter first (they follow it with their code).
  async function closeReport(v) {
    if (!v.public) {
      if (confirm(t('confirm'))) await act('cancel', {});
      return;
    }
    const text = prompt(t('feedback_on_close'));
    if (text === null) return;
    try {
      if (text.trim()) await api('POST', `/reports/${encodeURIComponent(id)}/feedback`, { text });
    } catch (e) {
      msg.replaceChildren(errorBox(e));
      return;
    }
    await act('cancel', {});
  }

  async function showNearest(el, r) {
    devices ??= await allDevices().catch(() => []);
    const near = devices.filter((d) => d.position && d.state === 'available')
      .map((d) => ({ ...d, m: haversine(r.lat, r.lon, d.position.lat, d.position.lon) }))
      .sort((a, b) => a.m - b.m).slice(0, 8);
    el.replaceChildren(near.length ? table([
      [t('device'), (d) => `${d.name} (${d.id})`],
      [t('distance'), (d) => fmtDist(d.m)],
      ['', (d) => h('button', { class: 'pick', 'data-device': d.id, onclick: () => act('dispatch', { device: d.id }) }, t('dispatch_to'))],
    ], near, { class: 'list' }) : t('none'));
  }

  async function loadEvidence(el) {
    try {
      const list = await api('GET', `/evidence?report=${encodeURIComponent(id)}`);
      if (!list.items.length) {
        el.replaceChildren(t('no_evidence'));
        return;
      }
      el.replaceChildren(...list.items.map((e) => evidenceCard(e)));
    } catch (e) {
      el.replaceChildren(errorBox(e));
    }
  }

  // Listen before the first load: an event that lands while the report is being fetched
  // (the dispatcher answers within milliseconds) must still refresh the page.
  const off = onEvent((ev) => {
    const d = ev.data || {};
    const mine = d.report === id || d.report?.id === id || d.report_id === id || d.id === id;
    if (mine && ['report', 'assignment', 'evidence', 'alarm'].includes(ev.kind)) later();
  });
  try {
    await render();
  } catch (e) {
    box.replaceChildren(errorBox(e));
  }
  return () => { off(); clearTimeout(pending); miniMap?.remove(); };
}

/** A citizen's tip: where, how many reporters, whether a contact is on file (the contact itself
 * only for leaders and admins, on request, audited), and the feedback the reporters see. */
function publicSection(id, v) {
  const p = v.public;
  const role = session.user.role;
  const onFile = p.tips.filter((x) => x.contact_on_file).length;
  const contacts = h('div', { id: 'public-contacts' });
  const reveal = ['leader', 'admin'].includes(role) && onFile ? h('button', {
    id: 'show-contact',
    onclick: async () => {
      try {
        const c = await api('GET', `/reports/${encodeURIComponent(id)}/contacts`);
        contacts.replaceChildren(h('ul', {}, c.public.tips.filter((x) => x.contact).map((x) =>
          h('li', { class: 'contact' }, `${x.code} · `, h('b', {}, x.contact)))),
        h('p', { class: 'muted' }, `${t('audit')} #${c.audit.id} · ${t('ledger')} #${c.audit.ledger_seq}`));
      } catch (e) {
        contacts.replaceChildren(errorBox(e));
      }
    },
  }, t('show_contact')) : null;
  const err = h('div', {});
  const form = ['dispatcher', 'leader', 'admin'].includes(role) ? h('form', { id: 'feedback-form', class: 'form-grid' },
    h('label', {}, t('feedback_new'), h('textarea', { id: 'feedback-text', name: 'text', rows: 3, maxlength: 1000, required: true })),
    h('button', { type: 'submit', id: 'feedback-submit' }, t('submit')), err) : null;
  form?.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('POST', `/reports/${encodeURIComponent(id)}/feedback`, { text: form.querySelector('#feedback-text').value });
      form.reset(); // the report.feedback event re-renders the page
    } catch (ex) {
      err.replaceChildren(errorBox(ex));
    }
  });
  return h('section', { id: 'public-tip', class: 'card' },
    h('h3', {}, t('public_tip')),
    h('dl', {},
      h('dt', {}, t('place')), h('dd', {}, p.place || '—'),
      h('dt', {}, t('tip_count')), h('dd', { id: 'tip-count' }, String(p.count)),
      h('dt', {}, t('contact')), h('dd', { id: 'contact-on-file' },
        onFile ? t('contact_on_file') : t('no_contact'))),
    reveal, contacts,
    h('h4', {}, t('feedback')),
    h('ol', { id: 'feedback-list' }, (v.feedback || []).map((f) =>
      h('li', {}, h('time', {}, fmtTime(f.ts)), ' ', h('span', { class: 'feedback-text' }, f.text), ` · ${f.author}`))),
    form);
}

/** An evidence item: the photo or the seekable video (Range requests), hash, receipt, custody. */
function evidenceCard(e) {
  const src = `/api/v1/evidence/${encodeURIComponent(e.id)}/content`;
  const media = e.mime?.startsWith('image/') ? h('img', { src, alt: e.id, class: 'evidence-photo', loading: 'lazy' })
    : e.mime?.startsWith('video/') ? h('video', { src, controls: true, preload: 'metadata', class: 'evidence-video' })
      : h('a', { href: src, download: e.id }, e.id);
  const details = h('div', { class: 'receipt' }, h('button', {
    onclick: async (ev) => {
      const v = await api('GET', `/evidence/${encodeURIComponent(e.id)}`);
      ev.target.replaceWith(
        h('h4', {}, t('receipt')), h('pre', { class: 'receipt-json' }, JSON.stringify(v.receipt, null, 2)),
        h('h4', {}, t('custody')), table([
          [t('seq'), (c) => c.seq], [t('time'), (c) => fmtTime(c.ts)], [t('kind'), (c) => c.kind], [t('actor'), (c) => c.actor],
        ], v.custody, { class: 'list' }));
    },
  }, `${t('receipt')} / ${t('custody')}`));
  return h('div', { class: 'card evidence', 'data-evidence': e.id, 'data-mime': e.mime },
    media,
    h('dl', {},
      h('dt', {}, 'ID'), h('dd', {}, e.id),
      h('dt', {}, t('hash')), h('dd', { class: 'mono sha256' }, e.sha256),
      h('dt', {}, t('size')), h('dd', {}, `${e.size} B · ${e.mime}`),
      h('dt', {}, t('device')), h('dd', {}, e.device),
      h('dt', {}, t('time')), h('dd', {}, fmtTime(e.received_at)),
      h('dt', {}, t('ledger')), h('dd', {}, `#${e.ledger_seq}`)),
    details);
}

/** Look-ups of vehicles, persons and departments, audited like a phone's. */
export async function lookupPage(root) {
  const out = h('div', { id: 'lookup-result' });
  const f = h('form', { class: 'card form-grid', id: 'lookup-form' },
    h('label', {}, t('kind'), h('select', { name: 'kind' },
      ['vehicle', 'person', 'department'].map((k) => h('option', { value: k }, t(k))))),
    h('label', {}, t('query'), h('input', { name: 'q', required: true })),
    h('label', {}, t('at'), h('input', { name: 'at', type: 'date' })),
    h('button', { type: 'submit' }, t('search')));
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(f));
    const q = new URLSearchParams({ q: d.q });
    if (d.at) q.set('at', d.at);
    try {
      const r = await api('GET', `/lookup/${d.kind}?${q}`);
      out.replaceChildren(h('div', { class: 'card' },
        h('h3', {}, r.found ? t('found') : t('not_found')),
        r.result ? kv(r.result) : null,
        r.candidates?.length ? h('div', {}, h('h4', {}, t('candidates')), ...r.candidates.map(kv)) : null,
        h('p', { class: 'muted' }, `audit #${r.audit?.id} · ${t('ledger')} #${r.audit?.ledger_seq}`)));
    } catch (ex) {
      out.replaceChildren(errorBox(ex));
    }
  });
  root.append(h('div', { class: 'page' }, h('h2', {}, t('lookup')), f, out));
}

function kv(obj) {
  return h('dl', { class: 'kv' }, Object.entries(obj).flatMap(([k, v]) => [
    h('dt', {}, k), h('dd', {}, v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v ?? '—'))]));
}

/** The look-up audit and the ledger, for auditors. */
export async function auditPage(root) {
  const lookups = h('div', { id: 'lookups' }, t('loading'));
  const ledger = h('div', { id: 'ledger' }, t('loading'));
  root.append(h('div', { class: 'page' }, h('h2', {}, t('audit')),
    h('section', {}, h('h3', {}, t('lookups')), lookups), h('section', {}, h('h3', {}, t('ledger')), ledger)));
  const lrows = [];
  async function moreLookups(after) {
    const p = await api('GET', `/lookups?limit=50${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    lrows.push(...p.items);
    lookups.replaceChildren(table([
      ['#', (r) => r.id], [t('time'), (r) => fmtTime(r.at ?? r.ts)], [t('actor'), (r) => r.actor ?? r.device ?? '—'],
      [t('channel'), (r) => r.channel ?? '—'], [t('kind'), (r) => r.kind], [t('query'), (r) => r.q],
      [t('outcome'), (r) => r.outcome ?? '—'],
    ], lrows, { class: 'list' }), p.next ? h('button', { onclick: () => moreLookups(p.next) }, t('more')) : null);
  }
  const erows = [];
  async function moreLedger(before) {
    const p = await api('GET', `/ledger?limit=50${before ? `&before=${before}` : ''}`);
    erows.push(...p.items);
    ledger.replaceChildren(table([
      [t('seq'), (e) => e.seq], [t('time'), (e) => fmtTime(e.ts)], [t('kind'), (e) => e.kind], [t('actor'), (e) => e.actor],
      [t('subject'), (e) => e.subject], [t('hash'), (e) => h('span', { class: 'mono' }, e.hash.slice(0, 16))],
    ], erows, { class: 'list' }), p.next ? h('button', { onclick: () => moreLedger(p.next) }, t('more')) : null);
  }
  await Promise.all([moreLookups().catch((e) => lookups.replaceChildren(errorBox(e))),
    moreLedger().catch((e) => ledger.replaceChildren(errorBox(e)))]);
}

/** Users and devices, for admins; a new device's credentials are shown once with a QR code. */
export async function adminPage(root) {
  const users = h('div', { id: 'users' });
  const devs = h('div', { id: 'devices' });
  const integrations = h('div', { id: 'integrations' });
  const shown = h('div', { id: 'credentials' });
  const userForm = h('form', { class: 'card form-grid', id: 'add-user' },
    h('h3', {}, t('add_user')),
    h('label', {}, t('name'), h('input', { name: 'name', required: true })),
    h('label', {}, t('role'), h('select', { name: 'role' }, ['dispatcher', 'leader', 'admin', 'auditor'].map((r) => h('option', { value: r }, t(r))))),
    h('label', {}, t('password'), h('input', { name: 'password', type: 'password', autocomplete: 'new-password' })),
    h('button', { type: 'submit' }, t('submit')));
  const devForm = h('form', { class: 'card form-grid', id: 'add-device' },
    h('h3', {}, t('add_device')),
    h('label', {}, t('name'), h('input', { name: 'name', required: true })),
    h('label', {}, t('staff'), h('input', { name: 'staff' })),
    h('button', { type: 'submit' }, t('submit')));
  root.append(h('div', { class: 'page' }, h('h2', {}, t('admin')), h('div', { class: 'two' }, devForm, userForm), shown,
    h('section', {}, h('h3', {}, t('users')), users), h('section', {}, h('h3', {}, t('devices')), devs),
    h('section', {}, h('h3', {}, t('integrations')), integrations)));
  /** Runs an admin action after confirmation, shows its error, then reloads the lists. */
  const act = (path, body) => async () => {
    if (!confirm(t('confirm'))) return;
    await api('POST', path, body).catch((ex) => shown.replaceChildren(errorBox(ex)));
    await Promise.all([loadUsers(), loadIntegrations()]).catch((ex) => shown.replaceChildren(errorBox(ex)));
  };

  userForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(userForm));
    try {
      const r = await api('POST', '/users', { name: d.name, role: d.role, password: d.password || undefined });
      shown.replaceChildren(h('div', { class: 'card once' }, h('p', {}, t('credentials_once')),
        h('pre', {}, JSON.stringify({ username: r.username, password: r.password }, null, 2))));
      userForm.reset();
      await loadUsers();
    } catch (ex) {
      shown.replaceChildren(errorBox(ex));
    }
  });
  devForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(devForm));
    try {
      const r = await api('POST', '/devices', { name: d.name, staff: d.staff || undefined });
      const canvas = h('canvas', { id: 'device-qr' });
      // The QR code opens the field app provisioned (credentials in the link's fragment).
      await QRCode.toCanvas(canvas, r.app_url || JSON.stringify(r), { width: 240, errorCorrectionLevel: 'M' });
      shown.replaceChildren(h('div', { class: 'card once' }, h('p', {}, t('credentials_once')), canvas,
        r.app_url ? h('p', {}, h('a', { id: 'device-app-link', href: r.app_url, target: '_blank', rel: 'noopener' }, t('open_field_app'))) : null,
        h('pre', { id: 'device-credentials' }, JSON.stringify(r, null, 2))));
      devForm.reset();
      await loadDevices();
    } catch (ex) {
      shown.replaceChildren(errorBox(ex));
    }
  });
  async function loadUsers() {
    const r = await api('GET', '/users');
    const who = (u) => `/users/${encodeURIComponent(u.name)}`;
    const roleSelect = (u) => {
      const sel = h('select', { 'aria-label': `${t('role')} ${u.name}` },
        ['dispatcher', 'leader', 'admin', 'auditor'].map((r) => h('option', { value: r, selected: r === u.role }, t(r))));
      sel.addEventListener('change', () => act(`${who(u)}/role`, { role: sel.value })().then(loadUsers));
      return sel;
    };
    users.replaceChildren(table([[t('name'), (u) => u.name], [t('role'), roleSelect],
      [t('state'), (u) => (u.disabled_at ? t('disabled') : t('active'))], [t('created'), (u) => fmtTime(u.created_at)],
      ['', (u) => (u.disabled_at
        ? h('button', { onclick: act(`${who(u)}/enable`) }, t('enable'))
        : h('button', { class: 'danger', onclick: act(`${who(u)}/disable`) }, t('disable')))]],
    r.items, { class: 'list' }));
  }
  async function loadIntegrations() {
    const r = await api('GET', '/integrations');
    integrations.replaceChildren(table([[t('name'), (a) => a.name],
      [t('subscribe'), (a) => (a.subscribe || []).join(' ')], [t('publish'), (a) => (a.publish || []).join(' ')],
      [t('state'), (a) => (a.revoked_at ? t('disabled') : t('active'))],
      ['', (a) => (a.revoked_at ? '' : h('button', { class: 'danger',
        onclick: act(`/integrations/${encodeURIComponent(a.name)}/disable`) }, t('disable')))]],
    r.items, { class: 'list' }));
  }
  async function loadDevices() {
    const list = await allDevices();
    devs.replaceChildren(table([
      ['ID', (d) => d.id], [t('name'), (d) => d.name], [t('staff'), (d) => d.staff || '—'], [t('state'), (d) => t(d.state)],
      ['', (d) => d.state === 'revoked' ? '' : h('button', { class: 'danger', onclick: async () => {
        if (!confirm(t('confirm'))) return;
        await api('POST', `/devices/${encodeURIComponent(d.id)}/revoke`).catch((ex) => shown.replaceChildren(errorBox(ex)));
        await loadDevices();
      } }, t('revoke'))],
    ], list.slice(0, 2000), { class: 'list' }));
  }
  await Promise.all([loadUsers(), loadDevices(), loadIntegrations()]).catch((e) => shown.replaceChildren(errorBox(e)));
}

/** The OpenAPI document as a readable table. */
export async function apiPage(root) {
  const doc = await fetch('/api/v1/openapi.json').then((r) => r.json());
  const rows = Object.entries(doc.paths).flatMap(([path, ops]) => Object.entries(ops).map(([method, op]) => ({ path, method, op })));
  root.append(h('div', { class: 'page' }, h('h2', {}, doc.info.title), h('p', {}, doc.info.description),
    h('p', {}, h('a', { href: '/api/v1/openapi.json' }, 'openapi.json')),
    table([
      [t('method'), (r) => h('code', {}, r.method.toUpperCase())], [t('paths'), (r) => h('code', {}, `/api/v1${r.path}`)],
      [t('description'), (r) => `${r.op.summary}. ${r.op.description}`],
      ['', (r) => r.op.parameters.map((p) => `${p.name} (${p.in})`).join(', ')],
    ], rows, { class: 'list', id: 'api-table' })));
}
