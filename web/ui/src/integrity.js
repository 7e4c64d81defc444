// The leaders' integrity-index dashboard (issue 11): every unit of a period on one screen as a
// coloured tile, a period selector, recompute (leaders, admins) and the yearly assessment; and
// one unit's trend as a small inline SVG chart, its explanation with the deductions and the ids
// of the records behind them, its warnings and alarms with their rectification cases.
import { t, tf } from './i18n.js';
import { h, api, table, errorBox, fmtTime, onEvent, session } from './core.js';

const WRITERS = ['leader', 'admin'];
const COLOURS = ['green', 'blue', 'yellow', 'orange', 'red'];
const SVG = 'http://www.w3.org/2000/svg';

/** The period before or after a label (`2026-Q4`, `2026-11` or `2026`); the label itself if unknown. */
export function shiftPeriod(label, by) {
  let m = /^(\d{4})-Q([1-4])$/.exec(label);
  if (m) {
    const q = Number(m[1]) * 4 + Number(m[2]) - 1 + by;
    return `${Math.floor(q / 4)}-Q${(q % 4) + 1}`;
  }
  m = /^(\d{4})-(\d{2})$/.exec(label);
  if (m) {
    const n = Number(m[1]) * 12 + Number(m[2]) - 1 + by;
    return `${Math.floor(n / 12)}-${String((n % 12) + 1).padStart(2, '0')}`;
  }
  m = /^(\d{4})$/.exec(label);
  return m ? String(Number(m[1]) + by) : label;
}

function scoreText(s) {
  return Number.isInteger(s) ? String(s) : s.toFixed(2).replace(/\.?0+$/, '');
}

/** Every unit of a period as coloured tiles. */
export async function indexPage(root, params) {
  const asked = params.get('period') || '';
  const box = h('div', { id: 'index-dashboard' }, t('loading'));
  const msg = h('div', { id: 'index-message' });
  root.append(h('div', { class: 'page' }, h('h2', {}, t('index')), box));
  const go = (p) => { location.hash = `#/index?period=${encodeURIComponent(p)}`; };

  async function render() {
    const v = await api('GET', `/index${asked ? `?period=${encodeURIComponent(asked)}` : ''}`);
    const period = v.period;
    const input = h('input', { id: 'period-input', name: 'period', value: period, size: 9 });
    const form = h('form', { class: 'form-grid', id: 'period-form' },
      h('button', { type: 'button', id: 'period-prev', onclick: () => go(shiftPeriod(period, -1)) }, `‹ ${t('prev')}`),
      h('label', {}, t('period'), input),
      h('button', { type: 'submit' }, t('show')),
      h('button', { type: 'button', id: 'period-next', onclick: () => go(shiftPeriod(period, 1)) }, `${t('next')} ›`));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      go(input.value.trim());
    });
    const year = period.slice(0, 4);
    const compute = WRITERS.includes(session.user.role) ? h('button', {
      id: 'index-compute',
      onclick: async (e) => {
        e.target.disabled = true;
        msg.replaceChildren();
        try {
          const r = await api('POST', '/index/compute', { period });
          await render();
          msg.replaceChildren(h('span', { class: 'muted' }, tf('computed', { n: r.units.length })));
        } catch (ex) {
          msg.replaceChildren(errorBox(ex));
        } finally {
          e.target.disabled = false;
        }
      },
    }, t('recompute')) : null;
    const legend = h('div', { class: 'legend', id: 'index-legend' }, COLOURS.map((c) => h('span', { class: `chip c-${c}`, 'data-colour': c },
      `${t(c)} ${v.colours[c] ?? 0}`)));
    const tiles = v.units.length ? h('div', { class: 'tiles', id: 'index-grid' }, v.units.map((u) => h('a', {
      class: `tile c-${u.colour}`, href: `#/index/${encodeURIComponent(u.unit)}?period=${encodeURIComponent(period)}`,
      'data-unit': u.unit, 'data-colour': u.colour, 'data-score': u.score, title: u.explanation,
    }, h('span', { class: 'tile-score' }, scoreText(u.score)), h('span', { class: 'tile-name' }, u.unit_name || u.unit),
    h('span', { class: 'tile-code' }, `${u.unit} · ${t(u.colour)}`))))
      : h('p', { id: 'index-empty', class: 'muted' }, t('not_computed'));
    box.replaceChildren(
      h('div', { class: 'card index-bar' }, form, h('span', { class: 'spacer' }), compute,
        h('a', { href: `/api/v1/index/assessment.csv?year=${year}`, id: 'assessment-csv', download: `integrity-assessment-${year}.csv` }, t('assessment_csv')),
        h('a', { href: `/api/v1/index/assessment.html?year=${year}`, id: 'assessment-html', target: '_blank', rel: 'noopener' }, t('assessment_html'))),
      msg, legend, tiles);
  }

  try {
    await render();
  } catch (e) {
    box.replaceChildren(errorBox(e));
  }
  let pending = null;
  const off = onEvent((ev) => {
    if (ev.kind === 'index' && ev.type === 'index.computed') {
      clearTimeout(pending);
      pending = setTimeout(() => render().catch(() => {}), 300);
    }
  });
  return () => { off(); clearTimeout(pending); };
}

/** A small line chart of the score per period, dots in the period's colour. */
export function trendChart(trend) {
  const W = 520, H = 180, L = 34, R = 12, T = 12, B = 34;
  const svg = document.createElementNS(SVG, 'svg');
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('class', 'trend');
  svg.setAttribute('id', 'index-trend');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', t('trend'));
  const x = (i) => (trend.length === 1 ? L + (W - L - R) / 2 : L + (i * (W - L - R)) / (trend.length - 1));
  const y = (s) => T + ((100 - s) * (H - T - B)) / 100;
  for (const s of [0, 50, 100]) {
    el('line', { x1: L, x2: W - R, y1: y(s), y2: y(s), class: 'grid' });
    el('text', { x: L - 6, y: y(s) + 4, 'text-anchor': 'end', class: 'axis' }, String(s));
  }
  if (trend.length > 1) el('polyline', { points: trend.map((p, i) => `${x(i)},${y(p.score)}`).join(' '), class: 'line' });
  trend.forEach((p, i) => {
    el('circle', { cx: x(i), cy: y(p.score), r: 5, class: `dot c-${p.colour}`, 'data-period': p.period, 'data-score': p.score });
    el('text', { x: x(i), y: y(p.score) - 9, 'text-anchor': 'middle', class: 'value' }, scoreText(p.score));
    el('text', { x: x(i), y: H - 12, 'text-anchor': 'middle', class: 'axis' }, p.period);
  });
  return svg;
}

/** Links for the ids behind a source: reports and cases open their pages. */
function recordIds(source, ids) {
  const page = source === 'reports' ? 'reports' : ['cases', 'disciplined', 'overdue_alarms'].includes(source) ? 'cases' : null;
  return ids.map((id, i) => [i ? ', ' : '', page
    ? h('a', { href: `#/${page}/${encodeURIComponent(id)}`, class: 'record', 'data-source': source }, id)
    : h('span', { class: 'record mono', 'data-source': source }, id)]);
}

/** One unit: its trend, explanation, deductions, underlying records, alerts and history. */
export async function unitIndexPage(root, unit, params) {
  const box = h('div', { class: 'page', id: 'index-unit' }, t('loading'));
  root.append(box);
  try {
    const v = await api('GET', `/index/${encodeURIComponent(unit)}`);
    const row = v.latest.row;
    const inputs = v.latest.inputs || {};
    const records = Object.entries(v.records || {}).filter(([, ids]) => ids.length);
    const back = params?.get('period') ? `#/index?period=${encodeURIComponent(params.get('period'))}` : '#/index';
    box.replaceChildren(
      h('p', {}, h('a', { href: back, id: 'index-back' }, `‹ ${t('back')}`)),
      h('h2', {}, `${v.unit_name || v.unit} (${v.unit})`),
      h('div', { class: 'report-head' },
        h('div', { class: 'card' },
          h('div', { class: `tile big c-${row.colour}`, id: 'index-unit-tile', 'data-colour': row.colour },
            h('span', { class: 'tile-score' }, scoreText(row.score)), h('span', { class: 'tile-name' }, `${row.period} · ${t(row.colour)}`)),
          h('dl', {},
            h('dt', {}, t('unit_size')), h('dd', {}, `${row.size}${row.size_source === 'default' ? ` ${t('size_default')}` : ''}`),
            h('dt', {}, t('formula_version')), h('dd', {}, String(row.formula_version)),
            h('dt', {}, t('computed_at')), h('dd', {}, fmtTime(row.computed_at))),
          h('h3', {}, t('explanation')), h('p', { id: 'index-explanation' }, v.explanation)),
        h('div', { class: 'card' }, h('h3', {}, t('trend')), trendChart(v.trend))),
      h('section', {}, h('h3', {}, t('terms')), table([
        [t('indicator'), (x) => x.phrase || x.key], [t('raw'), (x) => x.raw], [t('value'), (x) => x.value],
        [t('points'), (x) => (x.points ? `-${x.points}` : '0')],
      ], inputs.terms || [], { class: 'list', id: 'index-terms' })),
      h('section', {}, h('h3', {}, t('records_behind')), records.length ? h('dl', { id: 'index-records' },
        records.flatMap(([source, ids]) => [h('dt', {}, t(`src_${source}`)), h('dd', {}, recordIds(source, ids))]))
        : h('p', { id: 'index-records' }, t('none'))),
      h('section', {}, h('h3', {}, t('alerts')), v.alerts.length ? table([
        [t('period'), (a) => a.period], [t('kind'), (a) => h('span', { class: `badge colour c-${a.level === 'alarm' ? 'red' : 'yellow'}` }, t(a.level))],
        [t('time'), (a) => fmtTime(a.ts)],
        [t('rectification'), (a) => (a.case_id ? h('a', { href: `#/cases/${encodeURIComponent(a.case_id)}`, class: 'rectification' }, a.case_id) : '—')],
      ], v.alerts, { class: 'list', id: 'index-alerts' }) : t('none')),
      h('section', {}, h('h3', {}, t('history')), table([
        [t('computed_at'), (x) => fmtTime(x.row.computed_at)], [t('period'), (x) => x.row.period],
        [t('score'), (x) => scoreText(x.row.score)], [t('status'), (x) => h('span', { class: `badge colour c-${x.row.colour}` }, t(x.row.colour))],
        [t('formula_version'), (x) => x.row.formula_version],
      ], v.history, { class: 'list', id: 'index-history' })));
  } catch (e) {
    box.replaceChildren(errorBox(e));
  }
}
