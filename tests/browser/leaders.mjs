// Cases and the integrity index in a real browser (issues 8, 10, 11), run by tests/web.rs against
// a live jiandu with four departments and seeded indicators: the desk opens a case in the view,
// sees its working-day countdown and submits the stage for approval; a leader finds it in the
// approvals inbox, approves it (the case moves to the next stage) and extends the new stage;
// then recomputes the integrity index of the period and sees every unit as a coloured tile,
// drills into the red one (trend chart, explanation, the records behind it, its rectification
// case) and fetches the yearly assessment. Screenshots at 1920×1080 and 390 wide go to
// $JD_ARTIFACTS; the case id is printed as `case: ID` for the Rust side. Exits non-zero on the
// first failure.
import { chromium } from 'playwright-core';
import path from 'node:path';

const URL = process.env.JD_URL;
const [deskName, deskPw] = process.env.JD_DESK.split(/:(.*)/s);
const [leadName, leadPw] = process.env.JD_LEADER.split(/:(.*)/s);
const PERIOD = process.env.JD_PERIOD;
const EXPECTED = JSON.parse(process.env.JD_COLOURS);
const OUT = process.env.JD_ARTIFACTS;
const WAIT = { timeout: 30000 };

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function login(page, name, pw) {
  await page.goto(`${URL}/#/login`);
  await page.waitForSelector('#login-form', WAIT);
  await page.fill('#login-name', name);
  await page.fill('#login-password', pw);
  await page.click('#login-submit');
  await page.waitForSelector('#who', WAIT);
}

const browser = await chromium.launch({
  executablePath: process.env.JD_CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
});
const errors = [];
try {
  // The desk opens a case: 15 working days for clue handling, counted on the official calendar.
  const deskCtx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const desk = await deskCtx.newPage();
  desk.on('pageerror', (e) => errors.push(e.message));
  await login(desk, deskName, deskPw);
  check(await desk.$('a[data-page="cases"]'), 'no cases link for the desk');
  check(await desk.$('a[data-page="index"]'), 'no integrity index link for the desk');
  check(!(await desk.$('a[data-page="approvals"]')), 'approvals inbox shown to a dispatcher');
  await desk.goto(`${URL}/#/cases`);
  await desk.waitForSelector('#new-case', WAIT);
  await desk.fill('#new-case input[name=title]', '县审计局公车私用核查');
  // Units are chosen from the departments registry (a datalist fed by /api/v1/departments); a
  // code that is not registered is refused before anything is sent.
  await desk.waitForFunction(() => document.querySelectorAll('#departments-list option').length === 4, null, WAIT);
  check(await desk.getAttribute('#new-case input[name=unit]', 'list') === 'departments-list', 'the unit field offers no departments');
  await desk.fill('#new-case input[name=unit]', 'D999');
  await desk.fill('#new-case input[name=handler]', deskName);
  await desk.click('#new-case-submit');
  check(await desk.$eval('#new-case input[name=unit]', (el) => !el.validity.valid), 'an unregistered unit was accepted');
  check(desk.url().includes('#/cases') && !desk.url().includes('#/cases/'), 'a case was opened for an unregistered unit');
  await desk.fill('#new-case input[name=unit]', 'D003');
  await desk.fill('#new-case input[name=handler]', deskName);
  await desk.fill('#new-case input[name=unit_head]', 'head1');
  await desk.fill('#new-case input[name=parties]', 'members:M00001，members:M00002');
  await desk.click('#new-case-submit');
  await desk.waitForSelector('#case-status[data-status="open"]', WAIT);
  const caseId = decodeURIComponent(desk.url().split('#/cases/')[1]);
  check(caseId, `no case id in ${desk.url()}`);
  const days = await desk.getAttribute('#case-deadline [data-working-days]', 'data-working-days');
  check(days === '15', `a fresh clue-handling stage shows ${days} working days left, expected 15`);
  const countdown = await desk.textContent('#case-deadline .countdown');
  check(countdown.includes('剩余 15 个工作日'), `countdown: ${countdown}`);
  check(await desk.$('#case-stages li.current[data-stage="clue_handling"]'), 'clue handling is not the current stage');
  check(!(await desk.$('#case-approve')), 'the desk is offered approve');
  await desk.fill('#case-note', '材料齐全，提请审批');
  await desk.click('#case-advance');
  await desk.waitForSelector('#case-timeline li[data-kind="submitted"]', WAIT);
  await desk.waitForFunction(() => !document.querySelector('#case-advance'), null, WAIT);
  console.log(`case: ${caseId}`);

  // The case list filters by unit and shows the countdown.
  await desk.goto(`${URL}/#/cases?unit=D003`);
  await desk.waitForSelector(`#cases-table a[data-case="${caseId}"]`, WAIT);
  await desk.screenshot({ path: path.join(OUT, 'cases-1920.png'), fullPage: true });

  // A leader finds it in the approvals inbox and approves it: the case moves on.
  const leadCtx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const lead = await leadCtx.newPage();
  lead.on('pageerror', (e) => errors.push(e.message));
  await login(lead, leadName, leadPw);
  await lead.goto(`${URL}/#/approvals`);
  await lead.waitForSelector(`#approvals-table a[data-case="${caseId}"]`, WAIT);
  await lead.click(`#approvals-table a[data-case="${caseId}"]`);
  await lead.waitForSelector('#case-approve', WAIT);
  check(!(await lead.$('#case-advance')), 'a leader is offered advance');
  await lead.click('#case-approve');
  await lead.waitForSelector('#case-stages li.current[data-stage="preliminary_verification"]', WAIT);
  await lead.waitForSelector('#case-timeline li[data-kind="advanced"]', WAIT);
  const approvals = await lead.textContent('#case-approvals');
  check(approvals.includes(leadName), `approvals table: ${approvals}`);
  // The next stage runs 90 calendar days; the leader extends it by 10.
  const before = Number(await lead.getAttribute('#case-deadline', 'data-deadline'));
  await lead.fill('#case-extend input[name=days]', '10');
  await lead.fill('#case-extend input[name=reason]', '需补充调取银行流水');
  await lead.click('#case-extend button[type=submit]');
  await lead.waitForSelector('#case-timeline li[data-kind="extended"]', WAIT);
  await lead.waitForFunction((b) => Number(document.querySelector('#case-deadline')?.dataset.deadline) !== b, before, WAIT);
  const after = Number(await lead.getAttribute('#case-deadline', 'data-deadline'));
  check(after - before === 10 * 86400000, `the extension moved the deadline by ${after - before} ms, not 10 days`);
  await lead.screenshot({ path: path.join(OUT, 'case-1920.png'), fullPage: true });
  await lead.goto(`${URL}/#/approvals`);
  await lead.waitForSelector('#approvals-empty', WAIT);

  // The integrity index: nothing computed yet for the period; the leader recomputes it.
  await lead.goto(`${URL}/#/index?period=${encodeURIComponent(PERIOD)}`);
  await lead.waitForSelector('#index-empty', WAIT);
  check((await lead.inputValue('#period-input')) === PERIOD, 'the period selector does not show the period');
  await lead.click('#index-compute');
  await lead.waitForSelector('#index-grid .tile', WAIT);
  const tiles = await lead.$$eval('#index-grid .tile', (ts) => ts.map((t) => ({
    unit: t.dataset.unit, colour: t.dataset.colour, score: Number(t.dataset.score), bg: getComputedStyle(t).backgroundColor,
  })));
  const got = Object.fromEntries(tiles.map((x) => [x.unit, x.colour]).sort());
  check(JSON.stringify(got) === JSON.stringify(EXPECTED), `tile colours ${JSON.stringify(got)}, expected ${JSON.stringify(EXPECTED)}`);
  const red = tiles.find((x) => x.colour === 'red');
  check(red.bg === 'rgb(220, 38, 38)', `the red tile is painted ${red.bg}`);
  check(new Set(tiles.map((x) => x.bg)).size === tiles.length, `tiles of different colours share a paint: ${JSON.stringify(tiles)}`);
  const legend = await lead.textContent('#index-legend [data-colour="red"]');
  check(legend.includes('1'), `legend: ${legend}`);
  console.log(`index ${PERIOD}: ${tiles.map((x) => `${x.unit} ${x.colour} ${x.score}`).join(', ')}`);
  await lead.screenshot({ path: path.join(OUT, 'index-1920.png'), fullPage: true });

  // The yearly assessment, with the session cookie.
  const csvHref = await lead.getAttribute('#assessment-csv', 'href');
  const csv = await leadCtx.request.get(`${URL}${csvHref}`);
  check(csv.ok() && (await csv.text()).includes(`${red.unit},`), `assessment CSV: ${csv.status()}`);
  const htmlHref = await lead.getAttribute('#assessment-html', 'href');
  const html = await leadCtx.request.get(`${URL}${htmlHref}`);
  check(html.ok() && (await html.text()).includes('class="red"'), `assessment HTML: ${html.status()}`);

  // Drill down to the red unit: trend, explanation, the records behind it, its rectification case.
  await lead.click(`#index-grid .tile[data-unit="${red.unit}"]`);
  await lead.waitForSelector('#index-explanation', WAIT);
  const why = await lead.textContent('#index-explanation');
  check(why.startsWith(`red (${red.score})`), `explanation: ${why}`);
  const dots = await lead.$$eval('#index-trend circle', (cs) => cs.map((c) => c.dataset.period));
  check(dots.length === 1 && dots[0] === PERIOD, `trend points: ${dots}`);
  check(await lead.$('#index-records a.record[data-source="reports"]'), 'the report behind the score is not listed');
  check(await lead.$('#index-alerts a.rectification'), 'the alarm has no rectification case link');
  await lead.screenshot({ path: path.join(OUT, 'index-unit-1920.png'), fullPage: true });

  // English switch on the dashboard.
  await lead.goto(`${URL}/#/index?period=${encodeURIComponent(PERIOD)}`);
  await lead.waitForSelector('#index-grid', WAIT);
  await lead.click('#lang');
  await lead.waitForFunction(() => document.querySelector('#index-legend [data-colour="red"]')?.textContent.startsWith('Red'), null, WAIT);
  await lead.click('#lang');

  // A 390-wide phone screen: the dashboard and the case fit.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, storageState: await leadCtx.storageState(), isMobile: true });
  const small = await phone.newPage();
  small.on('pageerror', (e) => errors.push(e.message));
  for (const [hash, sel, shot] of [[`#/index?period=${encodeURIComponent(PERIOD)}`, '#index-grid .tile', 'index-390.png'],
    [`#/cases/${encodeURIComponent(caseId)}`, '#case-timeline li[data-kind="extended"]', 'case-390.png']]) {
    await small.goto(`${URL}/${hash}`);
    await small.waitForSelector(sel, WAIT);
    await small.screenshot({ path: path.join(OUT, shot), fullPage: true });
    const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 2, `${hash} is ${overflow}px wider than a 390 screen`);
  }
  check(errors.length === 0, `page errors: ${errors.join('; ')}`);
  console.log('browser test passed');
} catch (e) {
  console.error(`FAILED: ${e.message}\npage errors: ${errors.join('; ')}`);
  let i = 0;
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      await p.screenshot({ path: path.join(OUT, `leaders-failure-${i++}.png`), fullPage: true }).catch(() => {});
      console.error(`page ${p.url()}: ${(await p.textContent('#main').catch(() => '')).slice(0, 1500)}`);
    }
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
