// The live map: every device as one GeoJSON point drawn by MapLibre's WebGL circle layer, so
// 50,000 devices cost one buffer upload per redraw rather than 50,000 DOM markers. Positions are
// WGS-84 from the API; with a GCJ-02 tile set they are shifted for display only.
import maplibregl from 'maplibre-gl';
import 'maplibre-gl/dist/maplibre-gl.css';
import { t } from './i18n.js';
import { h, api, allDevices, onEvent, fmtTime, session, stateFromDuty, STATE_COLOURS } from './core.js';
import { gcjToWgs, wgsToGcj } from './gcj02.js';

const STATES = ['available', 'busy', 'off_duty', 'offline', 'stale', 'unknown'];

/** A MapLibre style: the configured raster tiles, or a plain background when there are none. */
export function baseStyle() {
  const ui = session.ui || {};
  const layers = [{ id: 'bg', type: 'background', paint: { 'background-color': '#e9eef2' } }];
  const sources = {};
  if (ui.tile_url) {
    sources.tiles = { type: 'raster', tiles: [ui.tile_url], tileSize: 256, attribution: ui.tile_attribution || '' };
    layers.push({ id: 'tiles', type: 'raster', source: 'tiles' });
  }
  return { version: 8, sources, layers };
}

/** WGS-84 → display coordinates. */
export function display(lon, lat) {
  return session.ui?.gcj02 ? wgsToGcj(lon, lat) : [lon, lat];
}

/** Display coordinates (a click on the map) → WGS-84 [lon, lat]. */
export function fromDisplay(lon, lat) {
  return session.ui?.gcj02 ? gcjToWgs(lon, lat) : [lon, lat];
}

/** Fits the map to a list of [lon, lat]. */
export function fitTo(map, coords, maxZoom = 15) {
  if (!coords.length) return;
  const b = new maplibregl.LngLatBounds(coords[0], coords[0]);
  for (const c of coords) b.extend(c);
  map.fitBounds(b, { padding: 40, maxZoom, duration: 0 });
}

/** Renders the live map page into `root`; returns a cleanup function. */
export async function mapPage(root) {
  const counts = h('span', { id: 'device-count' }, t('loading'));
  const filters = h('div', { class: 'filters' },
    STATES.map((s) => h('label', { class: 'filter' },
      h('input', { type: 'checkbox', checked: true, value: s, 'data-state': s, onchange: applyFilter }),
      h('span', { class: 'dot', style: `background:${STATE_COLOURS[s]}` }), t(s))),
    h('input', { type: 'search', id: 'device-search', placeholder: `${t('devices')} / ${t('staff')}`, oninput: applyFilter }),
    counts);
  const panel = h('aside', { class: 'panel hidden', id: 'device-panel' });
  const mapEl = h('div', { id: 'map', class: 'map' });
  root.append(h('div', { class: 'map-page' }, filters, h('div', { class: 'map-wrap' }, mapEl, panel)));

  const map = new maplibregl.Map({ container: mapEl, style: baseStyle(), center: [118.3, 35.1], zoom: 9, attributionControl: false });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  map.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
  if (session.ui?.tile_url) map.addControl(new maplibregl.AttributionControl({ compact: true }));

  const devices = new Map();
  const feature = (d) => ({
    type: 'Feature',
    geometry: { type: 'Point', coordinates: display(d.position.lon, d.position.lat) },
    properties: { id: d.id, name: d.name, state: d.state },
  });
  const collection = () => ({
    type: 'FeatureCollection',
    features: [...devices.values()].filter((d) => d.position && d.state !== 'revoked').map(feature),
  });
  window.__jd = { map, devices };

  let redrawPending = false;
  let removed = false;
  const redraw = () => {
    if (redrawPending || removed) return;
    redrawPending = true;
    setTimeout(() => {
      redrawPending = false;
      if (removed) return;
      map.getSource('devices')?.setData(collection());
      updateCounts();
    }, 250);
  };

  function updateCounts() {
    const by = {};
    for (const d of devices.values()) by[d.state] = (by[d.state] || 0) + 1;
    counts.textContent = `${t('devices')}: ${devices.size} · ` + STATES.map((s) => `${t(s)} ${by[s] || 0}`).join(' · ');
  }

  function applyFilter() {
    if (!map.getLayer('devices')) return;
    const on = [...filters.querySelectorAll('input[type=checkbox]:checked')].map((i) => i.value);
    const q = filters.querySelector('#device-search').value.trim();
    const f = ['all', ['in', ['get', 'state'], ['literal', on]]];
    if (q) f.push(['any', ['in', q, ['get', 'name']], ['in', q, ['get', 'id']]]);
    map.setFilter('devices', f);
  }

  const ready = new Promise((resolve) => map.on('load', resolve));
  const [list] = await Promise.all([allDevices(), ready]);
  for (const d of list) devices.set(d.id, d);
  map.addSource('devices', { type: 'geojson', data: collection() });
  map.addSource('track', { type: 'geojson', data: { type: 'FeatureCollection', features: [] } });
  map.addLayer({ id: 'track', type: 'line', source: 'track', paint: { 'line-color': '#2563eb', 'line-width': 3 } });
  map.addLayer({
    id: 'devices', type: 'circle', source: 'devices',
    paint: {
      'circle-radius': ['interpolate', ['linear'], ['zoom'], 5, 2.5, 10, 5, 15, 8],
      'circle-color': ['match', ['get', 'state'], ...STATES.flatMap((s) => [s, STATE_COLOURS[s]]), '#999'],
      'circle-stroke-color': '#fff', 'circle-stroke-width': ['interpolate', ['linear'], ['zoom'], 8, 0, 12, 1],
    },
  });
  fitTo(map, collection().features.map((f) => f.geometry.coordinates));
  updateCounts();
  map.getContainer().dataset.ready = 'true';

  map.on('mouseenter', 'devices', () => { map.getCanvas().style.cursor = 'pointer'; });
  map.on('mouseleave', 'devices', () => { map.getCanvas().style.cursor = ''; });
  map.on('click', 'devices', (e) => {
    const id = e.features?.[0]?.properties?.id;
    if (id) showDevice(id);
  });

  async function showDevice(id) {
    const d = devices.get(id);
    if (!d) return;
    const p = d.position || {};
    panel.replaceChildren(
      h('button', { class: 'close', onclick: () => panel.classList.add('hidden') }, '×'),
      h('h3', {}, d.name),
      h('dl', {},
        h('dt', {}, 'ID'), h('dd', {}, d.id),
        h('dt', {}, t('state')), h('dd', { id: 'panel-state' }, t(d.state)),
        h('dt', {}, t('staff')), h('dd', {}, d.staff || '—'),
        h('dt', {}, t('last_seen')), h('dd', {}, fmtTime(d.last_seen)),
        h('dt', {}, `${t('lat')}, ${t('lon')}`), h('dd', {}, p.lat !== undefined ? `${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}` : '—'),
        h('dt', {}, t('speed')), h('dd', {}, p.spd != null ? `${p.spd.toFixed(1)} m/s` : '—'),
        h('dt', {}, t('battery')), h('dd', {}, p.bat != null ? `${p.bat}%` : '—')),
      h('p', { id: 'track-info' }, `${t('track_today')}: ${t('loading')}`));
    panel.classList.remove('hidden');
    const midnight = new Date();
    midnight.setHours(0, 0, 0, 0);
    try {
      const tr = await api('GET', `/devices/${encodeURIComponent(id)}/track?from=${midnight.getTime()}`);
      const coords = tr.geometry.coordinates.map(([lon, lat]) => display(lon, lat));
      map.getSource('track').setData({ type: 'Feature', geometry: { type: 'LineString', coordinates: coords }, properties: {} });
      panel.querySelector('#track-info').textContent = `${t('track_today')}: ${tr.properties.points}`;
    } catch (e) {
      panel.querySelector('#track-info').textContent = e.message;
    }
  }

  const off = onEvent((ev) => {
    if (ev.kind === 'position') {
      const p = ev.data;
      let d = devices.get(p.device);
      if (!d) {
        d = { id: p.device, name: p.device, state: 'available', online: true };
        devices.set(p.device, d);
      }
      d.position = { ...(d.position || {}), ts: p.ts, lat: p.lat, lon: p.lon, spd: p.spd, hdg: p.hdg };
      d.last_seen = p.ts;
      if (d.state !== 'offline' && d.state !== 'revoked') d.state = stateFromDuty(p.duty);
      redraw();
    } else if (ev.kind === 'device') {
      const d = devices.get(ev.data.device);
      if (!d) return;
      if (ev.type === 'device.offline') d.state = 'offline';
      else if (ev.type === 'device.stale') d.state = 'stale';
      else if (ev.type === 'device.online') d.state = stateFromDuty(d.duty);
      redraw();
    }
  });
  return () => {
    removed = true;
    off();
    map.remove();
    delete window.__jd;
  };
}
