// Smoothness with a large fleet: 10,000 devices and 1,000 updates/s against the real server, while the
// page measures its own frame intervals and long tasks. Run with `npm run perf`; prints the figures.
// The bounds are loose on purpose (shared CI machines): they catch a page that rebuilds the table per
// update (seconds-long frames), not a few dropped frames.
//
// PERF_BASE_BIN=path: also measure that server binary (e.g. a build of an older commit, with its page),
// alternately with the one under test, PERF_ROUNDS rounds each (default 3), and print both medians and
// their ratio: the machine's noise hits both pages alike. PERF_TRACE=1: a Chrome trace of each measured
// window, summarized (per-thread busy time, the renderer main thread's self time per event kind).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DeviceLink, Server, deviceInit, openBrowser, serialOf, serverBinary, sleep, waitLive } from '../lib/harness.js';
import { cpuByThread, cpuDelta, processCpuMs } from './cpu.js';
import { startTrace } from './trace.js';

const DEVICES = Number(process.env.PERF_DEVICES || 10000);
const RATE = Number(process.env.PERF_RATE || 1000);
const SECONDS = Number(process.env.PERF_SECONDS || 6);
const BASE_BIN = process.env.PERF_BASE_BIN || '';
const ROUNDS = BASE_BIN ? Number(process.env.PERF_ROUNDS || 3) : 1;
const TRACE = process.env.PERF_TRACE === '1';
// The server lets one device connection speak for at most 1,000 serials (--max-serials-per-connection).
const LINKS = Math.max(4, Math.ceil(DEVICES / 1000));

/** One measured run against the server binary `bin`: its figures, and what the assertions need. */
async function run(bin, t) {
  const server = await Server.start(undefined, { bin });
  const cleanup = [() => server.stop()];
  try {
    const links = await Promise.all(Array.from({ length: LINKS }, () => DeviceLink.connect(server)));
    cleanup.unshift(() => Promise.all(links.map((l) => l.close())));

    const registerStart = Date.now();
    for (let from = 1; from <= DEVICES; from += 1000) {
      const batch = [];
      for (let i = from; i < Math.min(from + 1000, DEVICES + 1); i += 1) batch.push(links[i % LINKS].send('INIT', serialOf(i), deviceInit(i)));
      await Promise.all(batch);
    }
    const registerMs = Date.now() - registerStart;

    const b = await openBrowser();
    cleanup.unshift(() => b.close());
    const { page } = b;
    const received = { INIT: 0, UPDT: 0, INFO: 0, changes: 0 };
    page.on('websocket', (ws) => {
      ws.on('framereceived', ({ payload }) => {
        const text = String(payload);
        const kind = /"type"\s*:\s*"(\w+)"/.exec(text.slice(0, 40))?.[1];
        if (kind in received) received[kind] += 1;
        // A batched UPDT (`/client/?batch=1`) carries a list of changes; a plain one, one.
        if (kind === 'UPDT') received.changes += text.startsWith('{"type":"UPDT","message":[') ? JSON.parse(text).message.length : 1;
      });
    });
    const loadStart = Date.now();
    await page.goto(`${server.origin}/`);
    await waitLive(page, 30000);
    await page.waitForFunction((n) => document.getElementById('result-count').textContent.replace(/\D/g, '') === String(n), DEVICES, { timeout: 30000 });
    const loadMs = Date.now() - loadStart;
    const domRows = await page.$$eval('#body tr[data-serial]', (rows) => rows.length);

    // Sorted by a field that the updates change, the hardest case for the page (rows move).
    await page.click('th[data-field="power_consumption"] button');
    await page.waitForSelector('th[data-field="power_consumption"][aria-sort="ascending"]', { timeout: 10000 });
    await sleep(1000);

    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const metricsBefore = await cdp.send('Performance.getMetrics');
    const stopTrace = TRACE ? await startTrace(page) : null;
    const before = { ...received };
    const cpuBefore = cpuByThread(b.profile);
    const serverCpuBefore = processCpuMs(server.proc.pid);
    const scriptCpuBefore = process.cpuUsage();
    await page.evaluate(() => {
      const m = { frames: [], long: [], stop: false };
      window.__perf = m;
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) m.long.push(e.duration);
      }).observe({ type: 'longtask' });
      let last = performance.now();
      const tick = (now) => {
        m.frames.push(now - last);
        last = now;
        if (!m.stop) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });

    // Load: RATE updates/s in 10 ms slices, spread over the links, without waiting for each ack.
    let sent = 0;
    const inflight = [];
    const started = Date.now();
    const total = RATE * SECONDS;
    // PERF_RATE=0: no updates, the page idle for PERF_SECONDS (what it costs to just be open).
  const more = () => (RATE > 0 ? sent < total : Date.now() - started < SECONDS * 1000);
  while (more() && Date.now() - started < SECONDS * 1000 + 5000) {
      const due = Math.min(total, Math.floor(((Date.now() - started) / 1000) * RATE));
      for (; sent < due; sent += 1) {
        const i = 1 + ((sent * 7919) % DEVICES);
        inflight.push(links[i % LINKS].update(serialOf(i), { power_consumption: (sent * 13) % 5000, battery: sent % 101 }));
      }
      await sleep(10);
    }
    await Promise.all(inflight);
    const sendSeconds = (Date.now() - started) / 1000;
    const lastSerial = serialOf(1 + ((Math.max(0, total - 1) * 7919) % DEVICES));
    await sleep(500);

    const m = await page.evaluate(() => {
      window.__perf.stop = true;
      return window.__perf;
    });
    const metricsAfter = await cdp.send('Performance.getMetrics');
    const cpu = cpuDelta(cpuBefore, cpuByThread(b.profile));
    const serverCpuMs = processCpuMs(server.proc.pid) - serverCpuBefore;
    const scriptCpu = process.cpuUsage(scriptCpuBefore);
    const trace = stopTrace ? await stopTrace() : null;
    await cdp.detach().catch(() => {});
    // Renderer main-thread seconds per measured second, by CDP's own accounting.
    const metric = (name) => {
      const value = (list) => list.metrics.find((x) => x.name === name)?.value ?? 0;
      return value(metricsAfter) - value(metricsBefore);
    };
    const windowS = metric('Timestamp');
    const share = (name) => Math.round((metric(name) / windowS) * 100);

    const frames = m.frames.slice(1).sort((a, c) => a - c);
    const pct = (p) => frames[Math.min(frames.length - 1, Math.floor((p / 100) * frames.length))];
    const figures = {
      devices: DEVICES,
      updates: total,
      achievedRate: Math.round(total / sendSeconds),
      registerMs,
      pageLoadMs: loadMs,
      domRows,
      frames: frames.length,
      fps: Math.round(frames.length / (frames.reduce((a, c) => a + c, 0) / 1000)),
      frameP50ms: Math.round(pct(50)),
      frameP95ms: Math.round(pct(95)),
      frameMaxMs: Math.round(frames[frames.length - 1]),
      pageGotUpdt: received.UPDT - before.UPDT,
      pageGotChanges: received.changes - before.changes,
      pageGotInit: received.INIT - before.INIT,
      longTasks: m.long.length,
      longTaskMaxMs: Math.round(Math.max(0, ...m.long)),
      // Percent of the window the renderer's main thread spent on each (CDP Performance metrics).
      mainTaskPct: share('TaskDuration'),
      scriptPct: share('ScriptDuration'),
      stylePct: share('RecalcStyleDuration'),
      layoutPct: share('LayoutDuration'),
      styleRecalcs: metric('RecalcStyleCount'),
      layouts: metric('LayoutCount'),
      // CPU time of all Chromium threads, and of the busiest ones, in percent of one core over the window:
      // unlike the wall-time figures above, not inflated when other work takes the cores.
      cpuPct: Math.round(cpu.total / 10 / windowS),
      serverCpuPct: Math.round(serverCpuMs / 10 / windowS),
      // This script: the load generator, and Playwright reading the page's websocket frames over CDP.
      scriptCpuPct: Math.round((scriptCpu.user + scriptCpu.system) / 10000 / windowS),
      cpuThreadsPct: Object.fromEntries(cpu.threads.slice(0, 6).map(([name, ms]) => [name, Math.round(ms / 10 / windowS)])),
      problems: b.problems.length,
    };
    const apiRecord = await server.getJson(`/api/devices/${lastSerial}`);
    return { figures, trace, apiBattery: apiRecord.battery, total, problems: b.problems };
  } finally {
    for (const step of cleanup) await step();
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, c) => a - c);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

test(`${DEVICES} devices, ${RATE} updates/s: frames keep coming and updates keep landing`, { timeout: 240000 * ROUNDS * (BASE_BIN ? 2 : 1) }, async (t) => {
  const bins = BASE_BIN ? [['base', BASE_BIN], ['this', serverBinary()]] : [['this', serverBinary()]];
  const fps = { base: [], this: [] };
  const cpu = { base: [], this: [] };
  for (let round = 1; round <= ROUNDS; round += 1) {
    for (const [label, bin] of bins) {
      const r = await run(bin, t);
      fps[label].push(r.figures.fps);
      cpu[label].push(r.figures.cpuPct);
      console.log(`# perf ${label}${BASE_BIN ? ` round ${round}` : ''} ${JSON.stringify(r.figures)}`);
      if (r.trace) console.log(`# trace ${label} ${JSON.stringify(r.trace)}`);
      if (label !== 'this') continue;
      const { figures } = r;
      assert.ok(figures.domRows < 200, `windowed: ${figures.domRows} rows in the DOM for ${DEVICES} devices`);
      // The page is still consistent: the server holds the last update's value.
      if (r.total > 0) assert.equal(r.apiBattery, (r.total - 1) % 101);
      assert.deepEqual(r.problems, [], 'no console errors');
      assert.ok(figures.frames > SECONDS * 10, `at least 10 frames/s while loaded (${figures.fps} fps)`);
      assert.ok(figures.frameP95ms < 250, `p95 frame interval ${figures.frameP95ms} ms`);
      assert.ok(figures.frameMaxMs < 2000, `no frame longer than 2 s (${figures.frameMaxMs} ms)`);
    }
  }
  if (BASE_BIN) {
    const summary = { rounds: ROUNDS, base: fps.base, this: fps.this, baseMedian: median(fps.base), thisMedian: median(fps.this) };
    summary.ratio = Math.round((summary.thisMedian / summary.baseMedian) * 100) / 100;
    Object.assign(summary, { baseCpuPct: cpu.base, thisCpuPct: cpu.this, cpuRatio: Math.round((median(cpu.this) / median(cpu.base)) * 100) / 100 });
    console.log(`# perf-ab ${JSON.stringify(summary)}`);
  }
});
