// The jiandu web view: login, then a hash-routed single page (map, reports, cases, approvals,
// integrity index, look-up, audit, admin, API); `#/page/id` opens one item of a page. Every page is also checked by role on the server; the menu only hides what the
// role cannot use.
import './style.css';
import { t, toggleLang, lang } from './i18n.js';
import { h, api, session, openEvents, closeEvents } from './core.js';
import { mapPage } from './map.js';
import { reportsPage, reportPage, lookupPage, auditPage, adminPage, apiPage } from './pages.js';
import { casesPage, casePage, approvalsPage } from './cases.js';
import { indexPage, unitIndexPage } from './integrity.js';

const ALL = ['dispatcher', 'leader', 'admin', 'auditor'];
const PAGES = [
  { path: 'map', roles: ['dispatcher', 'leader', 'admin'], render: mapPage },
  { path: 'reports', roles: ALL, render: reportsPage, detail: reportPage },
  { path: 'cases', roles: ALL, render: casesPage, detail: casePage },
  { path: 'approvals', roles: ['leader'], render: approvalsPage },
  { path: 'index', roles: ALL, render: indexPage, detail: unitIndexPage },
  { path: 'lookup', roles: ['dispatcher', 'leader', 'admin'], render: lookupPage },
  { path: 'audit', roles: ['auditor'], render: auditPage },
  { path: 'admin', roles: ['admin'], render: adminPage },
  { path: 'api', roles: ALL, render: apiPage },
];

const app = document.getElementById('app');
document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';
document.title = t('title');
let cleanup = null;
const live = h('span', { class: 'live', id: 'live' });

function setLive(up) {
  live.textContent = up ? `● ${t('live')}` : `○ ${t('disconnected')}`;
  live.className = up ? 'live up' : 'live down';
}

function loginPage() {
  const err = h('div', { id: 'login-error', role: 'alert' });
  const form = h('form', { class: 'login card', id: 'login-form' },
    h('h1', {}, t('title')),
    h('label', {}, t('name'), h('input', { id: 'login-name', name: 'name', autocomplete: 'username', required: true })),
    h('label', {}, t('password'), h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('button', { type: 'submit', id: 'login-submit' }, t('login')), err,
    h('button', { type: 'button', class: 'link', onclick: () => { toggleLang(); route(); } }, t('lang')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    const d = Object.fromEntries(new FormData(form));
    try {
      const r = await api('POST', '/session', { name: d.name, password: d.password });
      session.user = r.user;
      session.csrf = r.csrf;
      await afterLogin();
      location.hash = `#/${home()}`;
    } catch (ex) {
      err.textContent = ex.status === 429 ? t('rate_limited') : ex.status === 401 ? t('wrong_login') : ex.message;
    }
  });
  app.replaceChildren(h('div', { class: 'login-wrap' }, form));
}

function home() {
  return PAGES.find((p) => p.roles.includes(session.user.role)).path;
}

async function afterLogin() {
  session.ui = await api('GET', '/ui');
  openEvents(setLive);
}

async function logout() {
  await api('DELETE', '/session').catch(() => {});
  closeEvents();
  session.user = null;
  session.csrf = null;
  location.hash = '#/login';
}

function shell(active) {
  const nav = h('nav', { class: 'menu' }, PAGES.filter((p) => p.roles.includes(session.user.role)).map((p) =>
    h('a', { href: `#/${p.path}`, class: p.path === active ? 'active' : '', 'data-page': p.path }, t(p.path))));
  const main = h('main', { id: 'main' });
  app.replaceChildren(h('header', { class: 'top' },
    h('strong', { class: 'brand' }, t('title')), nav, h('span', { class: 'spacer' }), live,
    h('span', { class: 'who', id: 'who' }, `${session.user.name} · ${t(session.user.role)}`),
    h('button', { class: 'link', id: 'lang', onclick: () => { toggleLang(); route(); } }, t('lang')),
    h('button', { class: 'link', id: 'logout', onclick: logout }, t('logout'))), main);
  return main;
}

async function route() {
  cleanup?.();
  cleanup = null;
  document.title = t('title');
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const parts = path.split('/').map(decodeURIComponent);
  if (!session.user) {
    try {
      const me = await api('GET', '/session');
      session.user = me.user;
      session.csrf = me.csrf;
      await afterLogin();
    } catch {
      session.user = null;
    }
  }
  if (!session.user || parts[0] === 'login') {
    if (session.user && parts[0] === 'login') {
      location.hash = `#/${home()}`;
      return;
    }
    loginPage();
    return;
  }
  const page = PAGES.find((p) => p.path === parts[0]);
  if (!page) {
    location.hash = `#/${home()}`;
    return;
  }
  const main = shell(page.path);
  if (!page.roles.includes(session.user.role)) {
    main.append(h('div', { class: 'page forbidden', id: 'forbidden' }, h('h2', {}, '403'), h('p', {}, t('forbidden'))));
    return;
  }
  try {
    const params = new URLSearchParams(query || '');
    const r = page.detail && parts[1] ? await page.detail(main, parts[1], params) : await page.render(main, params);
    cleanup = typeof r === 'function' ? r : null;
  } catch (e) {
    main.append(h('div', { class: 'error' }, e.message));
  }
}

window.addEventListener('hashchange', route);
route();
