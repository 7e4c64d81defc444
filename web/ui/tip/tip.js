// The public tip page (issue 19): a citizen reports what they saw without an account, keeps the
// follow-up code and secret shown once, and later reads what the office answered. Chinese by
// default, English with ?lang=en. No innerHTML anywhere: everything typed is shown as text.
import './tip.css';

const ZH = {
  title: '群众举报', follow: '查询进度', new_tip: '我要举报', lang: 'English',
  intro: '看到公车私用、违规吃喝、收送礼品礼金等问题，请告诉我们。可以匿名。',
  kind: '问题类别', 'official-car': '公车私用', banquet: '违规吃喝', gift: '违规收送礼品礼金', other: '其他',
  text: '您看到了什么', text_hint: '时间、地点、人员、车辆等，越具体越好',
  place: '地点描述', place_hint: '如：XX小学南门', locate: '使用我的位置', lat: '纬度', lon: '经度',
  where: '在哪里：写下地点（如学校名称和哪个门），或使用手机定位，至少一项。只写地点也可以，工作人员会在地图上标出。',
  locating: '正在定位…', located: '已定位', no_location: '无法获取位置：写下地点描述即可',
  plate: '车牌号（如有）', contact: '联系方式（选填，仅领导可见）', anonymous: '匿名举报（不留联系方式）',
  photos: '照片（最多3张，JPEG/PNG/WebP）', photos_hint: '保存前会删除照片中的拍摄位置、设备型号等信息。', submit: '提交举报', sending: '正在提交…', solving: '正在进行安全验证…',
  done: '举报已收到', keep: '请保存以下查询码和密钥。密钥只显示这一次，我们也无法找回。',
  code: '查询码', secret: '密钥', print: '打印 / 保存', download: '下载为文本', check_now: '查询进度',
  follow_intro: '输入举报时得到的查询码和密钥。', check: '查询', status: '处理状态',
  received: '已收到', being_handled: '正在处理', closed: '已办结', feedback: '反馈', no_feedback: '暂无反馈',
  not_found: '没有找到：查询码或密钥不正确。', too_many: '操作太频繁，请 {s} 秒后再试。',
  failed: '提交失败，请稍后再试。', submitted_at: '提交时间',
};
const EN = {
  title: 'Report a concern', follow: 'Check progress', new_tip: 'New report', lang: '中文',
  intro: 'Seen an official car used privately, a banquet, gifts or cash? Tell us. You may stay anonymous.',
  kind: 'Kind', 'official-car': 'Official car used privately', banquet: 'Banquet', gift: 'Gifts or cash', other: 'Other',
  text: 'What did you see', text_hint: 'When, where, who, which vehicle: the more precise, the better',
  place: 'Place', place_hint: 'e.g. south gate of the primary school', locate: 'Use my location', lat: 'Latitude', lon: 'Longitude',
  where: 'Where: describe the place (e.g. the school and which gate), or use your phone\'s location, or both. A description alone is enough: the office marks it on the map.',
  locating: 'Locating…', located: 'Located', no_location: 'No location available: describing the place is enough',
  plate: 'Licence plate (if any)', contact: 'Contact (optional, seen by leaders only)', anonymous: 'Anonymous (no contact kept)',
  photos: 'Photos (up to 3, JPEG/PNG/WebP)', photos_hint: 'Location, camera and other details stored in a photo are removed before it is kept.', submit: 'Send', sending: 'Sending…', solving: 'Running a security check…',
  done: 'Report received', keep: 'Keep this code and secret. The secret is shown only now; nobody can recover it.',
  code: 'Code', secret: 'Secret', print: 'Print / save', download: 'Download as text', check_now: 'Check progress',
  follow_intro: 'Enter the code and secret you were given.', check: 'Check', status: 'Status',
  received: 'Received', being_handled: 'Being handled', closed: 'Closed', feedback: 'Feedback', no_feedback: 'No feedback yet',
  not_found: 'Nothing found: the code or the secret is wrong.', too_many: 'Too many attempts; try again in {s} s.',
  failed: 'Sending failed; please try again later.', submitted_at: 'Sent',
};
const params = new URLSearchParams(location.search);
const lang = params.get('lang') === 'en' ? 'en' : 'zh';
document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';
const t = (k, vars = {}) => ((lang === 'en' ? EN : ZH)[k] ?? k).replace(/\{(\w+)\}/g, (_, v) => String(vars[v] ?? ''));
document.title = `监督 · ${t('title')}`;

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const app = document.getElementById('tip-app');
const withLang = (hash) => `/tip${lang === 'en' ? '?lang=en' : ''}${hash}`;

function header() {
  const other = lang === 'en' ? `/tip${location.hash}` : `/tip?lang=en${location.hash}`;
  return h('header', {}, h('h1', {}, `监督 · ${t('title')}`),
    h('nav', {}, h('a', { href: withLang('#/'), id: 'nav-new' }, t('new_tip')),
      h('a', { href: withLang('#/follow'), id: 'nav-follow' }, t('follow')),
      h('a', { href: other, id: 'lang-switch' }, t('lang'))));
}

/** Leading zero bits of a SHA-256 digest. */
function zeroBits(buf) {
  let n = 0;
  for (const b of new Uint8Array(buf)) {
    if (b === 0) { n += 8; continue; }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

/** Finds a nonce whose `challenge:nonce` hashes to `difficulty` leading zero bits. */
async function solve(challenge, difficulty) {
  const enc = new TextEncoder();
  for (let n = 0; ; n++) {
    const digest = await crypto.subtle.digest('SHA-256', enc.encode(`${challenge}:${n}`));
    if (zeroBits(digest) >= difficulty) return `${challenge}:${n}`;
  }
}

function fieldErrorName(field) {
  return (field || '').replace(/\[\d+\]$/, '');
}

function tipForm() {
  const err = h('div', { id: 'tip-error', class: 'error', role: 'alert' });
  const loc = h('span', { class: 'hint', id: 'tip-locate-state' });
  const fieldErr = (name) => h('div', { class: 'field-error', 'data-field': name });
  const form = h('form', { id: 'tip-form', class: 'card', novalidate: true },
    h('p', { class: 'hint' }, t('intro')),
    h('label', { for: 'tip-kind' }, t('kind')),
    h('select', { id: 'tip-kind', name: 'kind' }, ['official-car', 'banquet', 'gift', 'other'].map((k) => h('option', { value: k }, t(k)))),
    fieldErr('kind'),
    h('label', { for: 'tip-text' }, t('text')),
    h('textarea', { id: 'tip-text', name: 'text', maxlength: 2000, placeholder: t('text_hint') }), fieldErr('text'),
    h('p', { class: 'hint', id: 'tip-where' }, t('where')),
    h('label', { for: 'tip-place' }, t('place')),
    h('input', { id: 'tip-place', name: 'place', maxlength: 200, placeholder: t('place_hint') }), fieldErr('place'),
    h('button', { type: 'button', class: 'secondary', id: 'tip-locate', onclick: locate }, t('locate')), loc,
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'tip-lat' }, t('lat')), h('input', { id: 'tip-lat', name: 'lat', inputmode: 'decimal' })),
      h('div', {}, h('label', { for: 'tip-lon' }, t('lon')), h('input', { id: 'tip-lon', name: 'lon', inputmode: 'decimal' }))),
    fieldErr('lat'), fieldErr('lon'),
    h('label', { for: 'tip-plate' }, t('plate')), h('input', { id: 'tip-plate', name: 'plate', maxlength: 16 }), fieldErr('plate'),
    h('label', {}, h('input', { type: 'checkbox', id: 'tip-anonymous', name: 'anonymous', value: 'true', onchange: anon }), t('anonymous')),
    h('label', { for: 'tip-contact' }, t('contact')), h('input', { id: 'tip-contact', name: 'contact', maxlength: 100 }), fieldErr('contact'),
    h('label', { for: 'tip-photos' }, t('photos')),
    h('input', { id: 'tip-photos', name: 'photo', type: 'file', accept: 'image/jpeg,image/png,image/webp', multiple: true }),
    h('p', { class: 'hint' }, t('photos_hint')),
    fieldErr('photos'),
    h('button', { type: 'submit', id: 'tip-submit' }, t('submit')), err);

  function anon() {
    const c = form.querySelector('#tip-contact');
    c.disabled = form.querySelector('#tip-anonymous').checked;
    if (c.disabled) c.value = '';
  }
  function locate() {
    if (!navigator.geolocation) { loc.textContent = t('no_location'); return; }
    loc.textContent = t('locating');
    navigator.geolocation.getCurrentPosition((p) => {
      form.querySelector('#tip-lat').value = p.coords.latitude.toFixed(6);
      form.querySelector('#tip-lon').value = p.coords.longitude.toFixed(6);
      loc.textContent = t('located');
    }, () => { loc.textContent = t('no_location'); }, { enableHighAccuracy: true, timeout: 15000 });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.textContent = '';
    form.querySelectorAll('.field-error').forEach((x) => { x.textContent = ''; });
    const button = form.querySelector('#tip-submit');
    button.disabled = true;
    button.textContent = t('sending');
    try {
      const data = new FormData(form);
      if (!form.querySelector('#tip-photos').files.length) data.delete('photo');
      let proof = null;
      for (let attempt = 0; attempt < 3; attempt++) {
        const headers = proof ? { 'X-Tip-Proof': proof } : {};
        const resp = await fetch('/api/v1/public/tips', { method: 'POST', body: data, headers, credentials: 'omit' });
        const body = await resp.json().catch(() => ({}));
        if (resp.status === 201) { showReceipt(body); return; }
        if (resp.status === 428 && body.challenge) {
          button.textContent = t('solving');
          proof = await solve(body.challenge.token, body.challenge.difficulty);
          continue;
        }
        if (resp.status === 429) { err.textContent = t('too_many', { s: resp.headers.get('Retry-After') || '60' }); return; }
        const field = fieldErrorName(body.error?.field);
        const slot = form.querySelector(`.field-error[data-field="${CSS.escape(field)}"]`);
        if (slot) slot.textContent = body.error.message;
        err.textContent = body.error ? `${field ? `${field}: ` : ''}${body.error.message}` : t('failed');
        err.dataset.field = field;
        return;
      }
      err.textContent = t('failed');
    } catch {
      err.textContent = t('failed');
    } finally {
      button.disabled = false;
      button.textContent = t('submit');
    }
  });
  return form;
}

function showReceipt(r) {
  const text = `${t('title')}\n${t('code')}: ${r.code}\n${t('secret')}: ${r.secret}\n${location.origin}/tip#/follow\n`;
  const blob = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  app.replaceChildren(header(), h('section', { class: 'card', id: 'tip-receipt' },
    h('h2', {}, t('done')), h('p', {}, t('keep')),
    h('label', {}, t('code')), h('div', { class: 'secret', id: 'tip-code' }, r.code),
    h('label', {}, t('secret')), h('div', { class: 'secret', id: 'tip-secret' }, r.secret),
    h('button', { type: 'button', id: 'tip-print', onclick: () => window.print() }, t('print')),
    h('a', { href: blob, download: `tip-${r.code}.txt`, id: 'tip-download', class: 'no-print' }, t('download')),
    h('p', { class: 'no-print' }, h('a', { href: withLang('#/follow'), id: 'tip-follow-link' }, t('check_now')))));
}

function followPage() {
  const out = h('div', { id: 'follow-result' });
  const form = h('form', { id: 'follow-form', class: 'card' },
    h('p', { class: 'hint' }, t('follow_intro')),
    h('label', { for: 'follow-code' }, t('code')), h('input', { id: 'follow-code', autocomplete: 'off', maxlength: 20 }),
    h('label', { for: 'follow-secret' }, t('secret')), h('input', { id: 'follow-secret', autocomplete: 'off', maxlength: 40 }),
    h('button', { type: 'submit', id: 'follow-submit' }, t('check')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    out.replaceChildren();
    const code = form.querySelector('#follow-code').value.trim();
    const secret = form.querySelector('#follow-secret').value.trim();
    if (!code || !secret) return;
    try {
      const resp = await fetch(`/api/v1/public/tips/${encodeURIComponent(code)}`, {
        headers: { 'X-Tip-Secret': secret, Accept: 'application/json' }, credentials: 'omit', cache: 'no-store',
      });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 429) { out.append(h('p', { class: 'error', id: 'follow-error' }, t('too_many', { s: resp.headers.get('Retry-After') || '60' }))); return; }
      if (!resp.ok) { out.append(h('p', { class: 'error', id: 'follow-error' }, t('not_found'))); return; }
      out.append(h('section', { class: 'card' },
        h('p', {}, `${t('status')}: `, h('span', { class: 'status', id: 'follow-status', 'data-status': body.status }, t(body.status))),
        h('p', { class: 'hint' }, `${t('submitted_at')}: ${new Date(body.submitted_at).toLocaleString(lang === 'en' ? 'en' : 'zh-CN')}`),
        h('h3', {}, t('feedback')),
        body.feedback.length ? h('ol', { class: 'feedback', id: 'follow-feedback' }, body.feedback.map((f) =>
          h('li', {}, h('time', {}, new Date(f.ts).toLocaleString(lang === 'en' ? 'en' : 'zh-CN')), ' ', f.text)))
          : h('p', { id: 'follow-feedback' }, t('no_feedback'))));
    } catch {
      out.append(h('p', { class: 'error', id: 'follow-error' }, t('failed')));
    }
  });
  return [form, out];
}

function route() {
  const follow = location.hash.startsWith('#/follow');
  app.replaceChildren(header(), ...(follow ? followPage() : [tipForm()]));
}
window.addEventListener('hashchange', route);
route();
