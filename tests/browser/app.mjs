// The field app in a real browser (issue 18 acceptance), run by tests/app.rs against a live
// jiandu: an admin adds a device in the desk view and its QR link opens the app provisioned on a
// phone-sized Chromium with emulated geolocation; on duty, heartbeats reach the platform; a
// minute's worth of points (JD_OFFLINE_S) made offline while moving, with a reload from the
// service worker in between, then online: the queue drains; an integration's tip is offered,
// accepted, arrived at and completed in the app; a generated JPEG taken through the file input is uploaded, interrupted
// by the network going off and on, stored, and its receipt's signature verified in the page; a
// field report with a photo and a look-up; logout wipes the phone. Screenshots of each screen in
// both languages go to $JD_ARTIFACTS. The last stdout line is a JSON summary for the Rust side.
import { chromium } from 'playwright-core';
import path from 'node:path';
import mqtt from 'mqtt';

const URL_ = process.env.JD_URL;
const [adminName, adminPw] = process.env.JD_ADMIN.split(/:(.*)/s);
const [tipUser, tipPw] = process.env.JD_TIP.split(/:(.*)/s);
const OUT = process.env.JD_ARTIFACTS;
const OFFLINE_S = Number(process.env.JD_OFFLINE_S || 60);
const PLATE = process.env.JD_PLATE || '鲁G12345';
const WAIT = { timeout: 30000 };
const START = { lat: 36.5012, lon: 118.5021 };

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const log = (...a) => console.log(new Date().toISOString().slice(11, 19), ...a);

async function api(p) {
  const r = await fetch(`${URL_}/api/v1${p}`, { headers: { Authorization: `Basic ${Buffer.from(`${adminName}:${adminPw}`).toString('base64')}` } });
  check(r.ok, `GET ${p}: ${r.status}`);
  return r.json();
}

const browser = await chromium.launch({
  executablePath: process.env.JD_CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
});
const errors = [];
const summary = {};
try {
  // 1. The admin adds a device in the desk view: its QR code and link open the app provisioned.
  const desk = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  await desk.goto(`${URL_}/#/login`);
  await desk.fill('#login-name', adminName);
  await desk.fill('#login-password', adminPw);
  await desk.click('#login-submit');
  await desk.waitForSelector('#map, #admin, nav', WAIT);
  await desk.goto(`${URL_}/#/admin`);
  await desk.waitForSelector('#device-form, form[name="device"], form', WAIT);
  const devForm = desk.locator('form').filter({ has: desk.locator('input[name="staff"]') });
  await devForm.locator('input[name="name"]').fill('app phone');
  await devForm.locator('button[type="submit"]').click();
  await desk.waitForSelector('#device-app-link', WAIT);
  const creds = JSON.parse(await desk.textContent('#device-credentials'));
  const link = await desk.getAttribute('#device-app-link', 'href');
  check(link === creds.app_url, `the link is app_url: ${link} vs ${creds.app_url}`);
  check(/\/app\/#d=[^&]+&t=[^&]+/.test(link) && !link.includes('?'), `credentials travel in the fragment only: ${link}`);
  check((await desk.evaluate(() => document.querySelector('#device-qr').width)) >= 200, 'QR code drawn');
  await desk.screenshot({ path: path.join(OUT, 'admin-qr.png') });
  summary.device = creds.device;
  log('device', creds.device);

  // 2. The phone opens the link (zh-CN by default) and is provisioned.
  const phoneCtx = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    geolocation: { latitude: START.lat, longitude: START.lon, accuracy: 8 }, permissions: ['geolocation', 'notifications'],
  });
  const page = await phoneCtx.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  // A WebSocket that cannot connect while the network is off is expected; any other error is not.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket connection to .* failed/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  const cdp = await phoneCtx.newCDPSession(page);
  // The network switched off and on through the DevTools protocol (the page sees offline/online).
  const network = async (online) => {
    await cdp.send('Network.emulateNetworkConditions', { offline: !online, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  };
  await page.goto(link);
  await page.waitForSelector('#conn[data-state="connected"]', WAIT);
  check(!(await page.evaluate(() => location.href)).includes('t='), 'the token is removed from the address bar');
  check((await page.evaluate(() => document.documentElement.lang)) === 'zh-CN', 'Chinese by default');
  await page.screenshot({ path: path.join(OUT, 'duty-zh.png') });
  await page.getByRole('button', { name: '上岗' }).click();
  await page.waitForSelector('#duty-state.on', WAIT);
  const seen = async () => (await api('/devices')).items.find((d) => d.id === creds.device);
  for (let i = 0; !(await seen())?.position; i++) {
    check(i < 60, 'no heartbeat of the app reached GET /api/v1/devices');
    await sleep(500);
  }
  log('heartbeats arrive', JSON.stringify((await seen()).position));

  // 3. English, from the stored credentials (no link): the same phone.
  await page.goto(`${URL_}/app/?lang=en#/duty`);
  await page.waitForSelector('#conn[data-state="connected"]', WAIT);
  await page.getByRole('button', { name: 'Go off duty' }).waitFor(WAIT);
  await page.screenshot({ path: path.join(OUT, 'duty-en.png') });

  // 4. Offline while moving; a reload in the middle comes from the service worker.
  await page.waitForFunction(() => navigator.serviceWorker?.controller, null, WAIT);
  await network(false);
  await page.waitForSelector('#conn[data-state="offline"]', WAIT);
  // Moving until the app has made a minute's worth of points (one a second): counted, not
  // timed, as a loaded machine throttles the page's timers and the reload costs a few seconds.
  log(`offline for ${OFFLINE_S} points`);
  const made = () => page.evaluate(() => window.__app.state.generated);
  const before = await made();
  const deadline = Date.now() + OFFLINE_S * 5000;
  let reloaded = false;
  for (let s = 0; (await made()) - before < OFFLINE_S; s++) {
    check(Date.now() < deadline, `the app made ${(await made()) - before} points offline in ${OFFLINE_S * 5} s`);
    await phoneCtx.setGeolocation({ latitude: START.lat + s * 0.0001, longitude: START.lon + s * 0.00005, accuracy: 6 });
    if (!reloaded && (await made()) - before >= OFFLINE_S / 2) {
      reloaded = true;
      await page.reload();
      await page.waitForSelector('#queue', WAIT);
      log('reloaded offline: queue', await page.getAttribute('#queue', 'data-points'));
    }
    await sleep(1000);
  }
  const queued = Number(await page.getAttribute('#queue', 'data-points'));
  check(queued >= OFFLINE_S / 2, `points queued while offline: ${queued}`);
  await page.screenshot({ path: path.join(OUT, 'offline-en.png') });
  await network(true);
  await page.waitForSelector('#conn[data-state="connected"]', WAIT);
  await page.waitForFunction(() => document.querySelector('#queue')?.dataset.points === '0', null, { timeout: 60000 });
  log('backlog of', queued, 'confirmed');

  // 5. A tip from an integration is offered to the app's device.
  await phoneCtx.setGeolocation({ latitude: START.lat, longitude: START.lon, accuracy: 6 });
  await sleep(2500);
  const hotline = await mqtt.connectAsync(URL_.replace(/^http/, 'ws') + '/mqtt', { username: tipUser, password: tipPw, clientId: `${tipUser}-app`, reconnectPeriod: 0 });
  const tip = { id: `tip${Date.now()}`, kind: 'banquet', text: '某酒店包间疑似公款吃喝 / banquet at a hotel', lat: START.lat + 0.002, lon: START.lon + 0.001, ts: Date.now(), source: 'hotline' };
  await hotline.publishAsync('jd/v1/reports', JSON.stringify(tip), { qos: 1 });
  await hotline.endAsync();
  summary.tip = tip.id;
  await page.waitForSelector('#offer', WAIT);
  check(/\d+ s/.test(await page.textContent('#offer-countdown')), 'the offer counts down');
  check(/m|km/.test(await page.textContent('#offer-distance')), 'the offer shows the distance');
  await page.screenshot({ path: path.join(OUT, 'offer-en.png') });
  await page.goto(`${URL_}/app/?lang=zh#/duty`);
  await page.waitForSelector('#offer', WAIT);
  for (const name of ['接受', '拒绝']) await page.getByRole('button', { name }).waitFor(WAIT);
  await page.screenshot({ path: path.join(OUT, 'offer-zh.png') });
  await page.goto(`${URL_}/app/?lang=en#/duty`);
  await page.getByRole('button', { name: 'Decline' }).waitFor(WAIT);
  await page.getByRole('button', { name: 'Accept' }).click();
  await page.waitForSelector('#job[data-stage="accepted"]', WAIT);
  await page.waitForSelector('#duty-state.busy', WAIT);
  await page.screenshot({ path: path.join(OUT, 'job-en.png') });
  await page.getByRole('button', { name: 'Arrived' }).click();
  await page.waitForSelector('#job[data-stage="arrived"]', WAIT);
  await page.goto(`${URL_}/app/?lang=zh#/duty`);
  await page.waitForSelector('#job[data-stage="arrived"]', WAIT);
  await page.getByRole('button', { name: '完成' }).waitFor(WAIT);
  await page.screenshot({ path: path.join(OUT, 'job-zh.png') });
  await page.goto(`${URL_}/app/?lang=en#/duty`);
  await page.fill('#complete-note', 'Checked on site; photos taken');
  await page.getByRole('button', { name: 'Complete' }).click();
  await page.waitForSelector('#no-job', WAIT);
  await page.waitForFunction(() => document.querySelector('#queue')?.dataset.messages === '0', null, WAIT);
  log('assignment accepted, arrived, completed');

  // 6. Evidence: a generated JPEG through the file input, interrupted by the network.
  await page.goto(`${URL_}/app/?lang=en#/evidence`);
  await page.waitForSelector('#take-photo', WAIT);
  const jpeg = await page.evaluate(async () => {
    const c = document.createElement('canvas');
    c.width = 2400; c.height = 1800;
    const g = c.getContext('2d');
    const img = g.createImageData(c.width, c.height);
    for (let i = 0; i < img.data.length; i++) img.data[i] = (i % 4 === 3) ? 255 : (Math.random() * 256) | 0;
    g.putImageData(img, 0, 0);
    g.fillStyle = '#b71c1c'; g.font = 'bold 160px sans-serif'; g.fillText('jiandu', 200, 400);
    const blob = await new Promise((ok) => c.toBlob(ok, 'image/jpeg', 0.95));
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  });
  const photo = Buffer.from(jpeg, 'base64');
  check(photo[0] === 0xff && photo[1] === 0xd8, 'a JPEG was generated');
  log('photo of', photo.length, 'bytes');
  await page.setInputFiles('#evidence-file', { name: 'scene.jpg', mimeType: 'image/jpeg', buffer: photo });
  await page.waitForFunction(() => window.__app.state.uploads.some((u) => u.state === 'uploading' && u.sent >= 1), null, { polling: 'raf', timeout: 30000 });
  await network(false);
  const cut = await page.evaluate(() => window.__app.state.uploads.map((u) => [u.evid, u.state, u.sent, u.meta.chunks]));
  log('network off during the upload', JSON.stringify(cut));
  const item = cut[cut.length - 1];
  check(item[1] !== 'stored' && item[2] < item[3], `the upload was interrupted before it finished: ${JSON.stringify(item)}`);
  await sleep(3000);
  check(await page.evaluate((e) => window.__app.state.uploads.find((u) => u.evid === e).state !== 'stored', item[0]), 'not stored while offline');
  await network(true);
  await page.waitForSelector(`li[data-evid="${item[0]}"][data-state="stored"]`, { timeout: 90000 });
  await page.waitForSelector(`li[data-evid="${item[0]}"][data-verified="true"]`, WAIT);
  summary.evid = item[0];
  summary.photo_bytes = photo.length;
  await page.screenshot({ path: path.join(OUT, 'evidence-en.png'), fullPage: true });
  log('evidence stored, receipt signature verified in the page');

  // 7. A field report with a photo, and a look-up.
  await page.goto(`${URL_}/app/?lang=en#/report`);
  await page.selectOption('#report-kind', 'official-car');
  await page.fill('#report-text', 'Official car parked at a restaurant');
  await page.fill('#report-plate', PLATE);
  await page.setInputFiles('#report-photos', { name: 'car.jpg', mimeType: 'image/jpeg', buffer: photo.subarray(0, photo.length) });
  await page.getByRole('button', { name: 'Report' }).click();
  await page.waitForSelector('#reports li[data-acked="true"]', WAIT);
  summary.field_report = await page.getAttribute('#reports li', 'data-id');
  await page.screenshot({ path: path.join(OUT, 'report-en.png'), fullPage: true });
  // Look-ups as the platform answers them: a misread plate (O for 0) gets candidates, a person
  // comes back masked (never the identity number), a department with its list of powers.
  await page.goto(`${URL_}/app/?lang=en#/lookup`);
  const ask = async (kind, q) => {
    await page.selectOption('#lookup-kind', kind);
    await page.fill('#lookup-q', q);
    await page.getByRole('button', { name: 'Look up' }).click();
    await page.waitForFunction((k) => document.querySelector('#lookup-answer')?.dataset.q === k, `${kind}:${q}`, WAIT);
    return page.textContent('#lookup-answer');
  };
  let answer = '';
  for (let i = 0; i < 50 && !/鲁G12340/.test(answer); i++) {
    answer = await ask('vehicle', '鲁G1234O');
    if (!/鲁G12340/.test(answer)) await sleep(300);
  }
  check(/Did you mean/.test(answer) && /鲁G12340/.test(answer), `a misread plate gets candidates: ${answer}`);
  await page.screenshot({ path: path.join(OUT, 'lookup-plate-en.png'), fullPage: true });
  answer = await ask('person', '张三丰');
  check(/张三丰/.test(answer) && /县财政局/.test(answer) && !/1949123/.test(answer), `a person, masked: ${answer}`);
  answer = await ask('department', '县财政局');
  check(/Powers/.test(answer) && /政府采购监管/.test(answer), `a department with its powers: ${answer}`);
  summary.lookup_found = await page.getAttribute('#lookup-answer', 'data-found');
  await page.screenshot({ path: path.join(OUT, 'lookup-en.png'), fullPage: true });
  await page.goto(`${URL_}/app/?lang=en#/settings`);
  await page.screenshot({ path: path.join(OUT, 'settings-en.png'), fullPage: true });

  // Accessible names (English) of every control the issue names.
  await page.goto(`${URL_}/app/?lang=en#/evidence`);
  await page.getByRole('button', { name: 'Take photo' }).waitFor(WAIT);
  await page.goto(`${URL_}/app/?lang=en#/duty`);
  await page.getByRole('button', { name: 'Go off duty' }).click();
  await page.getByRole('button', { name: 'Go on duty' }).waitFor(WAIT);
  // Off duty: no more points; every point the app made is confirmed.
  await page.waitForFunction(() => document.querySelector('#queue')?.dataset.points === '0', null, WAIT);
  summary.generated = await page.evaluate(() => window.__app.state.generated);
  for (const [tab, name] of [['report', 'Report'], ['lookup', 'Look up']]) {
    await page.goto(`${URL_}/app/?lang=en#/${tab}`);
    await page.getByRole('button', { name }).waitFor(WAIT);
  }

  // 8. Every screen in Chinese, each with its main control named in Chinese.
  const zhNames = { report: '上报', lookup: '查询', evidence: '拍照', settings: '退出并清除本机数据' };
  for (const s of ['report', 'lookup', 'evidence', 'settings']) {
    await page.goto(`${URL_}/app/?lang=zh#/${s}`);
    await page.waitForSelector(`#screen-${s}`, WAIT);
    await page.getByRole('button', { name: zhNames[s], exact: true }).waitFor(WAIT);
    if (s === 'lookup') {
      await page.selectOption('#lookup-kind', 'department');
      await page.fill('#lookup-q', '县财政局');
      await page.getByRole('button', { name: '查询', exact: true }).click();
      await page.waitForSelector('#lookup-answer', WAIT);
      check(/权力清单/.test(await page.textContent('#lookup-answer')), 'powers named in Chinese');
    }
    await page.screenshot({ path: path.join(OUT, `${s}-zh.png`), fullPage: true });
  }

  // 9. Logout wipes the phone: the set-up screen, nothing stored.
  await page.goto(`${URL_}/app/?lang=en#/settings`);
  page.once('dialog', (d) => d.accept());
  await page.click('#logout');
  await page.waitForSelector('#setup-form', WAIT);
  const left = await page.evaluate(() => new Promise((ok) => {
    const r = indexedDB.open('jiandu-app');
    r.onupgradeneeded = () => { r.transaction.abort(); ok('none'); };
    r.onsuccess = () => { const db = r.result; const has = db.objectStoreNames.contains('kv'); if (!has) return ok('empty');
      const g = db.transaction('kv').objectStore('kv').get('creds'); g.onsuccess = () => ok(g.result ? 'creds' : 'empty'); };
    r.onerror = () => ok('none');
  }));
  check(left !== 'creds', `credentials survive logout: ${left}`);
  await page.screenshot({ path: path.join(OUT, 'setup-en.png') });
  await page.goto(`${URL_}/app/?lang=zh`);
  await page.waitForSelector('#setup-form', WAIT);
  await page.screenshot({ path: path.join(OUT, 'setup-zh.png') });
  check(errors.length === 0, `errors in the page: ${errors.join(' | ')}`);
  console.log(JSON.stringify(summary));
} catch (e) {
  console.error(e.stack || String(e));
  console.error('page errors:', errors.join(' | '));
  process.exitCode = 1;
} finally {
  await browser.close();
}
