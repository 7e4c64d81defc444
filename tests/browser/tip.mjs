// A citizen's tip in a real browser (issue 19 acceptance), run by tests/tips.rs against a live
// jiandu with simulated phones. On a phone-sized screen: the public page in Chinese, a tip with
// the phone's location, a photo, a plate and a contact, the page solving the proof of work, the
// code and secret shown once. Then the desk: the report shows "contact on file" and never the
// contact; the desk writes feedback. A leader reveals the contact. The citizen reads the
// feedback with code and secret; a wrong secret gets nothing. The desk closes the report, asked
// for feedback on the way; the citizen sees it closed. A second citizen names the place only in
// words (no location): the desk sees "no location — place: …", places it on the report page,
// and the nearest phone gets it. Prints `result {json}` last.
import { chromium } from 'playwright-core';
import path from 'node:path';

const URL = process.env.JD_URL;
const [deskName, deskPw] = process.env.JD_DESK.split(/:(.*)/s);
const [leaderName, leaderPw] = process.env.JD_LEADER.split(/:(.*)/s);
const [adminName, adminPw] = process.env.JD_ADMIN.split(/:(.*)/s);
const NEAREST = process.env.JD_NEAREST;
const OUT = process.env.JD_ARTIFACTS;
const CONTACT = '13912345678';
const FEEDBACK = '经核实，该车为私家车，感谢您的监督。';
const WAIT = { timeout: 30000 };
// An 8×8 JPEG (327 bytes) as a camera library writes it; the test adds an EXIF block with a GPS
// position, which the server removes before storing the photo.
const JPEG_8X8 = Buffer.from('ffd8ffe000104a46494600010100000100010000ffdb0043000a07070807060a0808080b0a0a0b0e18100e0d0d0e1d15161118231f2524221f2221262b372f26293429212230413134393b3e3e3e252e4449433c48373d3e3bffdb0043010a0b0b0e0d0e1c10101c3b2822283b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3bffc00011080008000803012200021101031101ffc4001500010100000000000000000000000000000005ffc4001b10000104030000000000000000000000000031337173b1b2e1ffc4001501010100000000000000000000000000000506ffc4001e110001040203010000000000000000000001020304110061213141f0ffda000c03010002110311003f0086ed9b7732a00116a2934329664c722381b6c0aabe7cd0d7dd50cfffd9', 'hex');
function withExif(jpeg) {
  const exif = Buffer.concat([Buffer.from('Exif\0\0MM\0*\0\0\0\x08', 'binary'), Buffer.from('GPSLatitude 36.5012N')]);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(exif.length + 2);
  return Buffer.concat([jpeg.subarray(0, 2), Buffer.from([0xff, 0xe1]), len, exif, jpeg.subarray(2)]);
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function admin(pathname) {
  const resp = await fetch(`${URL}/api/v1${pathname}`, {
    headers: { Authorization: `Basic ${Buffer.from(`${adminName}:${adminPw}`).toString('base64')}` },
  });
  check(resp.ok, `GET ${pathname}: ${resp.status}`);
  return resp.json();
}

async function until(what, f, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    check(Date.now() < end, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function login(page, name, pw) {
  await page.goto(`${URL}/#/login`);
  await page.waitForSelector('#login-form', WAIT);
  await page.fill('#login-name', name);
  await page.fill('#login-password', pw);
  await page.click('#login-submit');
  await page.waitForSelector('#map', WAIT);
}

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'];
const browser = await chromium.launch({ executablePath: process.env.JD_CHROMIUM, args: ARGS });
const errors = [];
const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
try {
  // The citizen, on a phone, with location allowed: 100 m south of the nearest inspector.
  const citizen = await browser.newContext({
    ...phone, locale: 'zh-CN', permissions: ['geolocation'], geolocation: { latitude: 36.5, longitude: 118.5 },
  });
  const page = await citizen.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${URL}/tip`);
  await page.waitForSelector('#tip-form', WAIT);
  check((await page.textContent('h1')).includes('群众举报'), 'the page is in Chinese by default');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `the page is wider than the phone: ${width}px`);
  await page.selectOption('#tip-kind', 'official-car');
  await page.fill('#tip-text', '一辆挂公务牌照的车在实验小学门口接孩子放学');
  await page.fill('#tip-place', '实验小学南门');
  await page.click('#tip-locate');
  await page.waitForFunction(() => document.querySelector('#tip-lat').value !== '', null, WAIT);
  await page.fill('#tip-plate', '鲁G 12345');
  await page.fill('#tip-contact', CONTACT);
  await page.setInputFiles('#tip-photos', { name: 'gate.jpg', mimeType: 'image/jpeg', buffer: withExif(JPEG_8X8) });
  await page.screenshot({ path: path.join(OUT, 'tip-form-390.png'), fullPage: true });
  await page.click('#tip-submit');
  // The server asks this address for a proof of work (the test sets challenge_after = 1); the
  // page solves it and sends again.
  await page.waitForSelector('#tip-receipt', { timeout: 120000 });
  const code = (await page.textContent('#tip-code')).trim();
  const secret = (await page.textContent('#tip-secret')).trim();
  check(/^T[0-9A-Z]{10}$/.test(code), `code ${code}`);
  check(/^[0-9A-Z]{5}(-[0-9A-Z]{5}){3}$/.test(secret), `secret ${secret}`);
  check(await page.isVisible('#tip-print'), 'a print button');
  await page.emulateMedia({ media: 'print' });
  check(!(await page.isVisible('#tip-print')), 'the print view hides the buttons');
  await page.screenshot({ path: path.join(OUT, 'tip-receipt-print-390.png'), fullPage: true });
  await page.emulateMedia({ media: 'screen' });
  await page.screenshot({ path: path.join(OUT, 'tip-receipt-390.png'), fullPage: true });
  console.log(`citizen: tip ${code} sent`);

  // It became a public report, dispatched to the nearest phone, which accepted.
  const report = await until('the public report', async () => {
    const list = await admin('/reports');
    return list.items.find((r) => r.source === 'public');
  });
  await until('the nearest phone accepting', async () => {
    const v = await admin(`/reports/${report.id}`);
    return v.assignments.find((a) => a.status === 'accepted' && a.device_id === NEAREST);
  });
  console.log(`report ${report.id} accepted by ${NEAREST}`);

  // The desk: "contact on file", never the contact; no button to reveal it. Writes feedback.
  const deskCtx = await browser.newContext({ ...phone, locale: 'zh-CN' });
  const desk = await deskCtx.newPage();
  desk.on('pageerror', (e) => errors.push(e.message));
  await login(desk, deskName, deskPw);
  await desk.goto(`${URL}/#/reports/${report.id}`);
  await desk.waitForSelector('#public-tip', WAIT);
  check((await desk.textContent('#contact-on-file')).includes('已留联系方式'), 'contact on file shown');
  check(!(await desk.content()).includes(CONTACT), 'the desk page holds the contact');
  check(!(await desk.$('#show-contact')), 'a dispatcher is offered the contact');
  await desk.waitForSelector('#evidence .evidence[data-mime="image/jpeg"]', WAIT);
  await desk.fill('#feedback-text', FEEDBACK);
  await desk.click('#feedback-submit');
  await desk.waitForFunction((t) => document.querySelector('#feedback-list')?.textContent.includes(t), FEEDBACK, WAIT);
  await desk.screenshot({ path: path.join(OUT, 'tip-desk-390.png'), fullPage: true });
  console.log('desk: feedback written');

  // A leader reveals the contact (audited).
  const leaderCtx = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  const leader = await leaderCtx.newPage();
  leader.on('pageerror', (e) => errors.push(e.message));
  await login(leader, leaderName, leaderPw);
  await leader.goto(`${URL}/#/reports/${report.id}`);
  await leader.waitForSelector('#show-contact', WAIT);
  check(!(await leader.content()).includes(CONTACT), 'the contact shows only on request');
  await leader.click('#show-contact');
  await leader.waitForFunction((c) => document.querySelector('#public-contacts')?.textContent.includes(c), CONTACT, WAIT);
  console.log('leader: contact revealed');

  // The citizen follows up: status and feedback with code and secret; a wrong secret, nothing.
  await page.goto(`${URL}/tip#/follow`);
  await page.waitForSelector('#follow-form', WAIT);
  await page.fill('#follow-code', code);
  await page.fill('#follow-secret', 'AAAAA-BBBBB-CCCCC-DDDDD');
  await page.click('#follow-submit');
  await page.waitForSelector('#follow-error', WAIT);
  check(!(await page.$('#follow-status')), 'a wrong secret shows a status');
  await page.fill('#follow-secret', secret);
  await page.click('#follow-submit');
  await page.waitForSelector('#follow-status', WAIT);
  const status = await page.getAttribute('#follow-status', 'data-status');
  check(status === 'being_handled', `status ${status}`);
  check((await page.textContent('#follow-feedback')).includes(FEEDBACK), 'the feedback is shown');
  const shown = await page.textContent('#tip-app');
  check(!shown.includes(NEAREST) && !shown.includes(deskName), `internal details shown: ${shown}`);
  await page.screenshot({ path: path.join(OUT, 'tip-follow-390.png'), fullPage: true });

  // The desk closes the report; the page asks what to tell the reporter first.
  const CLOSING = '此线索已办结。';
  desk.once('dialog', (d) => d.accept(d.type() === 'prompt' ? CLOSING : undefined));
  await desk.click('#cancel-report');
  await desk.waitForSelector('#report-status[data-status="cancelled"]', WAIT);
  await desk.waitForFunction((t) => document.querySelector('#feedback-list')?.textContent.includes(t), CLOSING, WAIT);
  await page.goto(`${URL}/tip#/follow`);
  await page.waitForSelector('#follow-form', WAIT);
  await page.fill('#follow-code', code.toLowerCase());
  await page.fill('#follow-secret', secret.replaceAll('-', ' '));
  await page.click('#follow-submit');
  await page.waitForSelector('#follow-status[data-status="closed"]', WAIT);
  check((await page.textContent('#follow-feedback')).includes(CLOSING), 'the closing feedback is shown');
  console.log('desk: closed with feedback; citizen sees it closed');

  // A citizen without location: the page says a description is enough; with neither, the
  // place is asked for; with the place in words the tip is received.
  await page.goto(`${URL}/tip`);
  await page.waitForSelector('#tip-form', WAIT);
  check((await page.textContent('#tip-where')).includes('只写地点也可以'), 'the page explains that the place in words is enough');
  await page.selectOption('#tip-kind', 'gift');
  await page.fill('#tip-text', '县财政局三楼有人在办公室收受购物卡');
  await page.click('#tip-submit');
  await page.waitForSelector('#tip-error[data-field="place"]', { timeout: 120000 });
  await page.fill('#tip-place', '县财政局三楼东侧办公室');
  await page.click('#tip-submit');
  await page.waitForSelector('#tip-receipt', { timeout: 120000 });
  const placeOnly = await until('the place-only report', async () => {
    const list = await admin('/reports');
    return list.items.find((r) => r.source === 'public' && r.text.includes('购物卡') && r.status === 'unassigned');
  });
  check(placeOnly.lat === null && placeOnly.lon === null, `coordinates of a place-only tip: ${JSON.stringify(placeOnly)}`);
  // The desk: "no location — place: …"; a click on the map fills the form; the desk sets it.
  await desk.goto(`${URL}/#/reports/${placeOnly.id}`);
  await desk.waitForSelector('#report-unlocated', WAIT);
  check((await desk.textContent('#report-unlocated')).includes('县财政局三楼东侧办公室'), 'the place in words is shown');
  check(!(await desk.$('#dispatch-nearest')), 'no "nearest" for a report without a point');
  await desk.waitForSelector('#report-map canvas', WAIT);
  await desk.click('#report-map canvas', { position: { x: 40, y: 40 } });
  await desk.waitForFunction(() => /^-?\d+\.\d+$/.test(document.querySelector('#locate-lat')?.value || ''), null, WAIT);
  await desk.fill('#locate-lat', '36.5000');
  await desk.fill('#locate-lon', '118.5000');
  await desk.screenshot({ path: path.join(OUT, 'tip-desk-place-390.png'), fullPage: true });
  await desk.click('#locate-submit');
  await desk.waitForSelector('#report-point', WAIT);
  await until('the nearest phone accepting the placed tip', async () => {
    const v = await admin(`/reports/${placeOnly.id}`);
    return v.assignments.find((a) => a.status === 'accepted' && a.device_id === NEAREST);
  });
  console.log('desk: placed a place-only tip; the nearest phone took it');

  // English.
  await page.goto(`${URL}/tip?lang=en`);
  await page.waitForSelector('#tip-form', WAIT);
  check((await page.textContent('h1')).includes('Report a concern'), 'English with ?lang=en');

  check(errors.length === 0, `page errors: ${errors.join('; ')}`);
  console.log(`result ${JSON.stringify({ code, report: report.id, place_only: placeOnly.id })}`);
} finally {
  await browser.close();
}
