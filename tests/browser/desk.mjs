// The desk in a real browser (issue 8 acceptance), run by tests/web.rs against a live jiandu
// with simulated phones: log in (a wrong password is refused), a dispatcher cannot open the
// admin page, devices appear on the map and move as heartbeats arrive, a report made in the
// view is escalated, the desk sends the nearest phone, and its acceptance shows up live, an
// admin registers a phone and sees its QR code. Screenshots go to $JD_ARTIFACTS at 1920×1080
// and on a 390-wide phone screen. Exits non-zero with a message on the first failure.
import { chromium } from 'playwright-core';
import path from 'node:path';

const URL = process.env.JD_URL;
const [deskName, deskPw] = process.env.JD_DESK.split(/:(.*)/s);
const [adminName, adminPw] = process.env.JD_ADMIN.split(/:(.*)/s);
const NEAREST = process.env.JD_NEAREST;
const OUT = process.env.JD_ARTIFACTS;
const WAIT = { timeout: 30000 };
// Over HTTPS: the server key's SPKI pin, the only certificate Chromium is told to accept.
const SPKI = process.env.JD_SPKI;

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function login(page, name, pw) {
  await page.goto(`${URL}/#/login`);
  await page.waitForSelector('#login-form', WAIT);
  await page.fill('#login-name', name);
  await page.fill('#login-password', pw);
  await page.click('#login-submit');
}

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'];
if (SPKI) {
  // Without the pin, Chromium refuses the private CA's certificate: the trust below is the pin's.
  const bare = await chromium.launch({ executablePath: process.env.JD_CHROMIUM, args: ARGS });
  try {
    let refusedCert = '';
    try {
      await (await bare.newPage()).goto(`${URL}/healthz`);
    } catch (e) {
      refusedCert = e.message;
    }
    check(/ERR_CERT/.test(refusedCert), `without the SPKI pin the certificate must be refused: ${refusedCert || 'loaded'}`);
  } finally {
    await bare.close();
  }
}
const browser = await chromium.launch({
  executablePath: process.env.JD_CHROMIUM,
  args: [...ARGS, ...(SPKI ? [`--ignore-certificate-errors-spki-list=${SPKI}`] : [])],
});
const errors = [];
try {
  const desk = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const page = await desk.newPage();
  page.on('pageerror', (e) => errors.push(e.message));

  // Wrong password: refused, still on the login form, in Chinese by default.
  await login(page, deskName, 'definitely-wrong');
  await page.waitForFunction(() => document.querySelector('#login-error')?.textContent.length > 0, null, WAIT);
  const refused = await page.textContent('#login-error');
  check(refused.includes('用户名或密码错误'), `wrong password not refused as expected: ${refused}`);

  // Right password: the map with every phone, drawn by WebGL.
  await login(page, deskName, deskPw);
  await page.waitForSelector('#map[data-ready="true"]', WAIT);
  if (SPKI) {
    const cookies = await desk.cookies();
    check(cookies.length > 0 && cookies.every((c) => c.secure),
      `over HTTPS every cookie must be Secure: ${JSON.stringify(cookies.map((c) => [c.name, c.secure]))}`);
  }
  await page.waitForFunction(() => window.__jd.map.queryRenderedFeatures({ layers: ['devices'] }).length >= 3, null, WAIT);
  const rendered = () => page.evaluate((id) => {
    const f = window.__jd.map.queryRenderedFeatures({ layers: ['devices'] }).find((x) => x.properties.id === id);
    return f ? f.geometry.coordinates : null;
  }, NEAREST);
  const before = await rendered();
  check(before, `device ${NEAREST} is not drawn`);
  // It moves as heartbeats arrive (position events over SSE, no reload, no polling).
  await page.waitForFunction(([id, lat]) => {
    const f = window.__jd.map.queryRenderedFeatures({ layers: ['devices'] }).find((x) => x.properties.id === id);
    return f && Math.abs(f.geometry.coordinates[1] - lat) > 1e-6;
  }, [NEAREST, before[1]], WAIT);
  console.log(`map: device ${NEAREST} moved from ${before} to ${await rendered()}`);
  const count = await page.textContent('#device-count');
  check(count.includes('3'), `device count: ${count}`);
  await page.screenshot({ path: path.join(OUT, 'map-1920.png') });

  // Click a device: details and today's track. The phone keeps walking, so a click can land
  // where it was a moment ago: aim again until the details open.
  let opened = false;
  for (let attempt = 0; attempt < 10 && !opened; attempt++) {
    const px = await page.evaluate((id) => {
      const d = window.__jd.devices.get(id);
      const p = window.__jd.map.project([d.position.lon, d.position.lat]);
      const r = window.__jd.map.getCanvas().getBoundingClientRect();
      return [r.left + p.x, r.top + p.y];
    }, NEAREST);
    await page.mouse.click(px[0], px[1]);
    opened = await page
      .waitForFunction(() => /\d+$/.test(document.querySelector('#track-info')?.textContent || ''), null, { timeout: 3000 })
      .then(() => true, () => false);
  }
  check(opened, 'clicking the device did not open its details and track');

  // State filter: hiding "available" hides all three.
  await page.uncheck('input[data-state="available"]');
  await page.waitForFunction(() => window.__jd.map.queryRenderedFeatures({ layers: ['devices'] }).length === 0, null, WAIT);
  await page.check('input[data-state="available"]');

  // A dispatcher may not open the admin page (nor see it in the menu).
  check(!(await page.$('a[data-page="admin"]')), 'admin link shown to a dispatcher');
  await page.goto(`${URL}/#/admin`);
  await page.waitForSelector('#forbidden', WAIT);

  // A report made in the view, dispatched to the nearest phone, accepted live.
  await page.goto(`${URL}/#/reports`);
  await page.waitForSelector('#new-report', WAIT);
  await page.fill('#new-report input[name=text]', '某酒店疑似公款宴请');
  // 2.9 km from the nearest phone, outside the 2 km dispatch radius the test configures: the
  // dispatcher escalates it (live, over SSE), and the desk sends the nearest phone by hand.
  await page.fill('#new-report input[name=lat]', '36.525');
  await page.fill('#new-report input[name=lon]', '118.48');
  await page.click('#new-report-submit');
  await page.waitForSelector('#report-status[data-status="unassigned"]', WAIT);
  const reportUrl = page.url();
  const first = await page.getAttribute('#nearest button.pick', 'data-device');
  check(first === NEAREST, `the nearest available phone listed first is ${first}, expected ${NEAREST}`);
  await page.locator(`#nearest button.pick[data-device="${NEAREST}"]`).click();
  await page.waitForSelector('#timeline li[data-status="accepted"]', WAIT);
  await page.waitForSelector('#report-status[data-status="assigned"]', WAIT);
  const assignments = await page.textContent('#assignments');
  check(assignments.includes(NEAREST), `the nearest phone ${NEAREST} is not in ${assignments}`);
  console.log(`report: ${reportUrl} accepted by ${NEAREST}`);
  await page.screenshot({ path: path.join(OUT, 'report-1920.png'), fullPage: true });

  // English switch.
  await page.click('#lang');
  await page.waitForFunction(() => document.querySelector('a[data-page="map"]')?.textContent === 'Live map', null, WAIT);
  await page.click('#lang');

  // The same pages on a 390-wide phone screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, storageState: await desk.storageState(), isMobile: true });
  const small = await phone.newPage();
  small.on('pageerror', (e) => errors.push(e.message));
  await small.goto(`${URL}/#/map`);
  await small.waitForSelector('#map[data-ready="true"]', WAIT);
  await small.waitForFunction(() => window.__jd.map.queryRenderedFeatures({ layers: ['devices'] }).length >= 3, null, WAIT);
  await small.screenshot({ path: path.join(OUT, 'map-390.png') });
  await small.goto(reportUrl);
  await small.waitForSelector('#timeline li[data-status="accepted"]', WAIT);
  await small.screenshot({ path: path.join(OUT, 'report-390.png'), fullPage: true });
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 2, `report page is ${overflow}px wider than a 390 screen`);

  // An admin registers a phone: credentials once, with a QR code.
  const adminCtx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const admin = await adminCtx.newPage();
  admin.on('pageerror', (e) => errors.push(e.message));
  await login(admin, adminName, adminPw);
  await admin.waitForSelector('a[data-page="admin"]', WAIT);
  await admin.goto(`${URL}/#/admin`);
  await admin.waitForSelector('#add-device', WAIT);
  await admin.fill('#add-device input[name=name]', '巡查 9 号');
  await admin.click('#add-device button[type=submit]');
  await admin.waitForSelector('#device-qr', WAIT);
  const creds = JSON.parse(await admin.textContent('#device-credentials'));
  check(creds.device && creds.password && creds.mqtt.startsWith(SPKI ? 'mqtts://' : 'mqtt://'), `credentials: ${JSON.stringify(creds)}`);
  const qrWidth = await admin.evaluate(() => document.querySelector('#device-qr').width);
  check(qrWidth >= 200, `QR code width ${qrWidth}`);
  await admin.screenshot({ path: path.join(OUT, 'admin-1920.png') });

  // Logging out ends the session.
  await page.click('#logout');
  await page.waitForSelector('#login-form', WAIT);

  // The desk user logs in again; the admin disables them from the users table, and the desk's
  // session ends at its next request.
  await login(page, deskName, deskPw);
  await page.waitForSelector('#logout', WAIT);
  admin.on('dialog', (d) => d.accept());
  const row = admin.locator('#users tr', { hasText: deskName });
  await row.locator('button.danger').click();
  await row.locator('button:not(.danger)').waitFor(WAIT);
  await page.reload();
  await page.waitForSelector('#login-form', WAIT);
  await login(page, deskName, deskPw);
  await page.waitForFunction(() => document.querySelector('#login-error')?.textContent.length > 0, null, WAIT);
  check(!(await page.$('#logout')), 'a disabled user logged in');
  check(errors.length === 0, `page errors: ${errors.join('; ')}`);
  console.log('browser test passed');
} catch (e) {
  console.error(`FAILED: ${e.message}\npage errors: ${errors.join('; ')}`);
  let i = 0;
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      await p.screenshot({ path: path.join(OUT, `failure-${i++}.png`), fullPage: true }).catch(() => {});
      console.error(`page ${p.url()}: ${(await p.textContent('#main').catch(() => '')).slice(0, 1500)}`);
    }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
