// The case pages (issue 10) for the desk and the leaders: the list with unit and overdue filters,
// open cases per unit and the negative records; one case with its stages, the working-day
// countdown, the timeline and the actions the caller's role may take (dispatchers and admins
// submit a stage for approval, leaders approve and extend); and the leaders' approvals inbox.
// The server checks every action against the case's stage template; the buttons only follow it.
import { t, tf, localName } from './i18n.js';
import { h, api, table, errorBox, fmtTime, onEvent, session } from './core.js';

const WORKERS = ['dispatcher', 'admin'];
const APPROVERS = ['leader'];

/** The countdown of an open case: working days left (or overdue) on the official calendar. */
export function countdown(c) {
  if (c.status !== 'open') return h('span', { class: 'badge s-completed' }, t('closed'));
  const n = c.remaining_working_days;
  const cls = c.overdue ? 'wd over' : n !== null && n <= 3 ? 'wd soon' : 'wd';
  const text = n === null || n === undefined ? t('wd_unknown')
    : c.overdue ? (n < 0 ? tf('wd_over', { n: -n }) : t('overdue')) : tf('wd_left', { n });
  return h('span', { class: cls, 'data-working-days': n ?? '', 'data-overdue': String(c.overdue) }, text);
}

function caseLink(c) {
  return h('a', { href: `#/cases/${encodeURIComponent(c.id)}`, class: 'case-link', 'data-case': c.id }, c.title);
}

function unitLink(unit) {
  return h('a', { href: `#/cases?unit=${encodeURIComponent(unit)}` }, unit);
}

function stageCell(c) {
  const waiting = c.status === 'open' && c.stage.submitted_by;
  return [localName(c.stage.name || c.stage.key), waiting ? [' ', h('span', { class: 'badge s-dispatching' }, t('awaiting_approval'))] : null];
}

/** The case list columns shared by the list and the inbox. */
function caseTable(rows, id) {
  return table([
    [t('case_title'), caseLink],
    [t('unit'), (c) => unitLink(c.unit)],
    [t('stage'), stageCell],
    [t('deadline'), (c) => fmtTime(c.deadline_at)],
    [t('remaining'), countdown],
    [t('handler'), (c) => c.handler],
    [t('created'), (c) => fmtTime(c.created_at)],
  ], rows, { class: 'list', id });
}

/** Negative records, newest first, for a unit or all. */
async function negativeRecords(el, unit) {
  try {
    const r = await api('GET', `/negative-records?limit=50${unit ? `&unit=${encodeURIComponent(unit)}` : ''}`);
    el.replaceChildren(r.items.length ? table([
      [t('time'), (n) => fmtTime(n.ts)],
      [t('subject_kind'), (n) => (n.subject_kind === 'unit' ? t('unit') : t('handler'))],
      [t('subject'), (n) => n.subject],
      [t('case'), (n) => h('a', { href: `#/cases/${encodeURIComponent(n.case_id)}` }, n.case_id)],
      [t('stage'), (n) => n.stage],
      [t('deadline'), (n) => fmtTime(n.deadline_at)],
      [t('reason'), (n) => n.reason],
    ], r.items, { class: 'list', id: 'negative-records-table' }) : t('none'));
  } catch (e) {
    el.replaceChildren(errorBox(e));
  }
}

/** Cases: filters, a form for a new case (desk), the list, open cases per unit, negative records. */
export async function casesPage(root, params) {
  const unit = params.get('unit') || '';
  const overdue = params.get('overdue') === 'true';
  const filters = h('form', { class: 'card form-grid', id: 'case-filters' },
    h('label', {}, t('unit'), unitInput({ name: 'unit', value: unit })),
    h('label', { class: 'filter' }, h('input', { type: 'checkbox', name: 'overdue', checked: overdue }), t('overdue_only')),
    h('button', { type: 'submit' }, t('filter')));
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(filters);
    const q = new URLSearchParams();
    if (d.get('unit')) q.set('unit', d.get('unit').trim());
    if (d.get('overdue')) q.set('overdue', 'true');
    location.hash = `#/cases${q.size ? `?${q}` : ''}`;
  });
  const listBox = h('div', { id: 'case-list' }, t('loading'));
  const overviewBox = h('div', { id: 'case-overview' }, t('loading'));
  const recordsBox = h('div', { id: 'negative-records' }, t('loading'));
  root.append(h('div', { class: 'page' }, h('h2', {}, t('cases')),
    WORKERS.includes(session.user.role) ? newCaseForm(unit) : null, filters, listBox,
    h('div', { class: 'two' },
      h('section', {}, h('h3', {}, t('overview')), overviewBox),
      h('section', {}, h('h3', {}, `${t('negative_records')}${unit ? ` · ${unit}` : ''}`), recordsBox))));

  const rows = [];
  let next = null;
  async function load(after) {
    const q = new URLSearchParams({ limit: '50' });
    if (unit) q.set('unit', unit);
    if (overdue) q.set('overdue', 'true');
    if (after) q.set('after', after);
    const page = await api('GET', `/cases?${q}`);
    rows.push(...page.items);
    next = page.next;
    listBox.replaceChildren(rows.length ? caseTable(rows, 'cases-table') : t('none'));
    if (next) listBox.append(h('button', { onclick: () => load(next).catch((e) => listBox.append(errorBox(e))) }, t('more')));
  }
  async function loadOverview() {
    const r = await api('GET', '/cases/overview');
    overviewBox.replaceChildren(r.items.length ? table([
      [t('unit'), (c) => unitLink(c.unit)],
      [t('stage'), (c) => c.stage],
      [t('open_count'), (c) => c.open],
      [t('overdue_count'), (c) => (c.overdue ? h('span', { class: 'wd over' }, c.overdue) : '0')],
    ], r.items, { class: 'list', id: 'case-overview-table' }) : t('none'));
  }
  const all = () => Promise.all([
    load().catch((e) => listBox.replaceChildren(errorBox(e))),
    loadOverview().catch((e) => overviewBox.replaceChildren(errorBox(e))),
    negativeRecords(recordsBox, unit)]);
  await all();
  let pending = null;
  const off = onEvent((ev) => {
    if (ev.kind === 'case' || (ev.kind === 'alarm' && String(ev.type).startsWith('case.'))) {
      clearTimeout(pending);
      pending = setTimeout(() => {
        rows.length = 0;
        all();
      }, 300);
    }
  });
  return () => { off(); clearTimeout(pending); };
}

/** The departments registry as a datalist, fetched once per page load and shared by forms. */
let departments = null;
function departmentsList() {
  let list = document.getElementById('departments-list');
  if (!list) {
    list = h('datalist', { id: 'departments-list' });
    document.body.append(list);
  }
  if (!departments) {
    departments = api('GET', '/departments').then((r) => r.items).catch(() => []);
    departments.then((items) => list.replaceChildren(...items.map((d) => h('option', { value: d.code }, `${d.code} ${d.name}`))));
  }
  return departments;
}

/** A unit field offering the registry's departments; on submit a code not in it is refused. */
function unitInput(attrs) {
  departmentsList();
  const input = h('input', { ...attrs, list: 'departments-list', autocomplete: 'off' });
  input.addEventListener('input', () => input.setCustomValidity(''));
  return input;
}

/** Checks a unit field against the registry (empty passes; `required` handles that). */
async function checkUnit(input) {
  const items = await departmentsList();
  const ok = !input.value || !items.length || items.some((d) => d.code === input.value.trim());
  input.setCustomValidity(ok ? '' : t('unit_not_registered'));
  if (!ok) input.reportValidity();
  return ok;
}

function newCaseForm(unit) {
  const err = h('div');
  const f = h('form', { class: 'card form-grid', id: 'new-case' },
    h('h3', {}, t('new_case')),
    h('label', {}, t('case_title'), h('input', { name: 'title', required: true })),
    h('label', {}, t('unit'), unitInput({ name: 'unit', required: true, value: unit })),
    h('label', {}, t('handler'), h('input', { name: 'handler', required: true })),
    h('label', {}, t('unit_head'), h('input', { name: 'unit_head' })),
    h('label', {}, `${t('parties')} (${t('comma_hint')})`, h('input', { name: 'parties' })),
    h('button', { type: 'submit', id: 'new-case-submit' }, t('submit')), err);
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!(await checkUnit(f.elements.unit))) return;
    const d = Object.fromEntries(new FormData(f));
    const body = { title: d.title, unit: d.unit.trim(), handler: d.handler.trim() };
    if (d.unit_head.trim()) body.unit_head = d.unit_head.trim();
    const parties = d.parties.split(/[,，]/).map((p) => p.trim()).filter(Boolean);
    if (parties.length) body.parties = parties;
    try {
      const c = await api('POST', '/cases', body);
      location.hash = `#/cases/${encodeURIComponent(c.id)}`;
    } catch (ex) {
      err.replaceChildren(errorBox(ex));
    }
  });
  return f;
}

/** Time left to the deadline as days, hours and minutes (ticks every second on the case page). */
function timeLeft(deadline) {
  const ms = Math.max(0, deadline - Date.now());
  const m = Math.floor(ms / 60000);
  return tf('time_left', { d: Math.floor(m / 1440), h: Math.floor((m % 1440) / 60), m: m % 60 });
}

/** One case: stages, countdown, actions by role, approvals, timeline, timers, the unit's records. */
export async function casePage(root, id) {
  const box = h('div', { class: 'page case-page' }, t('loading'));
  root.append(box);
  const msg = h('div', { id: 'case-message' });
  // Inputs outlive re-renders: a live event re-renders the page, and must not wipe what the
  // user is typing.
  const note = h('input', { name: 'note', id: 'case-note', placeholder: t('note') });
  const days = h('input', { name: 'days', type: 'number', min: '1', inputmode: 'numeric' });
  const reason = h('input', { name: 'reason', required: true });
  let tick = null;

  async function act(path, body) {
    msg.replaceChildren();
    try {
      await api('POST', `/cases/${encodeURIComponent(id)}/${path}`, body);
      for (const input of [note, days, reason]) input.value = '';
      await render();
    } catch (e) {
      msg.replaceChildren(errorBox(e));
    }
  }

  let renders = 0;
  async function render() {
    const mine = ++renders;
    const c = await api('GET', `/cases/${encodeURIComponent(id)}`);
    if (mine !== renders) return;
    const role = session.user.role;
    const open = c.status === 'open';
    const stage = c.stages[c.stage.index];
    const here = c.approvals.filter((a) => a.stage_index === c.stage.index);
    const mineApproved = here.some((a) => a.approver === session.user.name);
    const actions = [];
    if (open && WORKERS.includes(role) && !c.stage.submitted_by) {
      actions.push(h('button', { id: 'case-advance', onclick: () => act('advance', { stage_index: c.stage.index, note: note.value || undefined }) }, t('advance')));
    }
    if (open && APPROVERS.includes(role) && c.stage.submitted_by && !mineApproved) {
      actions.push(h('button', { id: 'case-approve', onclick: () => act('approve', { stage_index: c.stage.index, note: note.value || undefined }) }, t('approve')));
    }
    let extendForm = null;
    if (open && APPROVERS.includes(role) && !c.overdue && stage && c.extensions < stage.max_extensions) {
      extendForm = h('form', { class: 'form-grid', id: 'case-extend' },
        h('label', {}, t('days'), days),
        h('label', {}, t('reason'), reason),
        h('button', { type: 'submit' }, t('extend')));
      extendForm.addEventListener('submit', (e) => {
        e.preventDefault();
        const d = Object.fromEntries(new FormData(extendForm));
        act('extend', { stage_index: c.stage.index, reason: d.reason, days: d.days ? Number(d.days) : undefined });
      });
    }
    const left = h('div', { class: 'muted', id: 'case-time-left' }, open ? timeLeft(c.deadline_at) : '');
    clearInterval(tick);
    if (open && !c.overdue) tick = setInterval(() => { left.textContent = timeLeft(c.deadline_at); }, 1000);
    const records = h('div', { id: 'negative-records' }, t('loading'));
    box.replaceChildren(
      h('h2', {}, `${t('case')} · ${c.title}`),
      h('div', { class: 'report-head' },
        h('div', { class: 'card' },
          h('dl', {},
            h('dt', {}, 'ID'), h('dd', { class: 'mono' }, c.id),
            h('dt', {}, t('status')), h('dd', {}, h('span', { class: `badge case-${c.status}`, id: 'case-status', 'data-status': c.status }, t(c.status))),
            h('dt', {}, t('unit')), h('dd', {}, unitLink(c.unit)),
            h('dt', {}, t('handler')), h('dd', {}, c.handler),
            h('dt', {}, t('unit_head')), h('dd', {}, c.unit_head || '—'),
            h('dt', {}, t('parties')), h('dd', {}, c.parties.join(', ') || '—'),
            h('dt', {}, t('evidence')), h('dd', {}, c.evidence.length ? c.evidence.join(', ') : '—'),
            h('dt', {}, t('origin')), h('dd', {}, c.origin.kind === 'report' && c.origin.id
              ? h('a', { href: `#/reports/${encodeURIComponent(c.origin.id)}` }, `${t('report')} ${c.origin.id}`)
              : `${c.origin.kind}${c.origin.id ? ` · ${c.origin.id}` : ''}`),
            h('dt', {}, t('created')), h('dd', {}, `${fmtTime(c.created_at)} · ${c.created_by}`),
            h('dt', {}, t('extensions')), h('dd', {}, String(c.extensions)))),
        h('div', { class: 'card deadline-card', id: 'case-deadline', 'data-deadline': c.deadline_at },
          h('div', { class: 'muted' }, `${t('stage_now')}: ${localName(stage?.name || c.stage.key)}`),
          h('div', { class: 'countdown' }, countdown(c)),
          h('div', {}, `${t('deadline')}: ${fmtTime(c.deadline_at)}`), left,
          open ? h('div', { id: 'case-approvals-count', 'data-approvals': here.length, 'data-required': c.stage.approvals_required ?? 0 },
            c.stage.submitted_by
              ? `${t('awaiting_approval')} · ${tf('approvals_n', { a: here.length, n: c.stage.approvals_required ?? 0 })} · ${c.stage.submitted_by} ${fmtTime(c.stage.submitted_at)}`
              : t('in_progress'), mineApproved ? ` · ${t('approved_by_me')}` : '') : null,
          actions.length || extendForm ? h('div', { class: 'actions' }, actions.length ? note : null, actions) : null,
          extendForm, msg)),
      h('section', {}, h('h3', {}, t('stages')), h('ol', { class: 'stages', id: 'case-stages' },
        c.stages.map((s, i) => h('li', {
          class: i < c.stage.index || c.status === 'closed' ? 'done' : i === c.stage.index ? 'current' : 'todo',
          'data-stage': s.key,
        }, h('b', {}, localName(s.name)), h('span', { class: 'muted' },
          ` ${s.limit_days} ${t(s.day_kind)}${s.approvals ? ` · ${tf('approvals_n', { a: c.approvals.filter((a) => a.stage_index === i).length, n: s.approvals })}` : ''}`))))),
      h('section', {}, h('h3', {}, t('timeline')), h('ol', { class: 'timeline', id: 'case-timeline' },
        c.timeline.map((l) => h('li', { 'data-kind': l.kind },
          h('time', {}, fmtTime(l.ts)), ' ', h('b', {}, t(`log_${l.kind}`)),
          ` · ${localName(c.stages[l.stage_index]?.name ?? l.stage)} · ${l.actor}`, l.note ? ` · ${l.note}` : '')))),
      h('div', { class: 'two' },
        h('section', {}, h('h3', {}, t('approval_log')), c.approvals.length ? table([
          [t('stage'), (a) => localName(c.stages[a.stage_index]?.name ?? String(a.stage_index))],
          [t('approver'), (a) => a.approver], [t('time'), (a) => fmtTime(a.ts)], [t('note'), (a) => a.note || ''],
        ], c.approvals, { class: 'list', id: 'case-approvals' }) : h('p', { id: 'case-approvals' }, t('none'))),
        h('section', {}, h('h3', {}, t('timers')), table([
          [t('stage'), (x) => localName(c.stages[x.stage_index]?.name ?? String(x.stage_index))],
          [t('kind'), (x) => (x.kind === 'overdue' ? t('log_overdue') : `${t('log_reminder')} · ${tf('wd_before', { n: x.working_days })}`)],
          [t('time'), (x) => fmtTime(x.due_at)], [t('state'), (x) => t(x.state)],
        ], c.timers, { class: 'list', id: 'case-timers' }))),
      h('section', {}, h('h3', {}, `${t('negative_records')} · ${c.unit}`), records));
    negativeRecords(records, c.unit);
  }

  // Listen before the first load, so a change made while it loads still refreshes the page.
  let pending = null;
  const off = onEvent((ev) => {
    const d = ev.data || {};
    if ((ev.kind === 'case' || ev.kind === 'alarm') && (d.case === id || d.case?.id === id || d.case_id === id || d.id === id)) {
      clearTimeout(pending);
      pending = setTimeout(() => render().catch(() => {}), 150);
    }
  });
  try {
    await render();
  } catch (e) {
    box.replaceChildren(errorBox(e));
  }
  return () => { off(); clearTimeout(pending); clearInterval(tick); };
}

/** The leaders' inbox: cases submitted for an approval the caller may still give. */
export async function approvalsPage(root) {
  const box = h('div', { id: 'approvals-inbox' }, t('loading'));
  root.append(h('div', { class: 'page' }, h('h2', {}, t('approvals')), box));
  async function load() {
    const r = await api('GET', '/cases/approvals');
    box.replaceChildren(r.items.length ? caseTable(r.items, 'approvals-table') : h('p', { id: 'approvals-empty' }, t('no_approvals')));
  }
  await load().catch((e) => box.replaceChildren(errorBox(e)));
  let pending = null;
  const off = onEvent((ev) => {
    if (ev.kind === 'case') {
      clearTimeout(pending);
      pending = setTimeout(() => load().catch(() => {}), 300);
    }
  });
  return () => { off(); clearTimeout(pending); };
}
