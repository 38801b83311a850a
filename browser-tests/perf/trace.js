// A Chrome trace of the page over a measured window, boiled down to where the time went: per thread,
// how busy it was, and for the renderer's main thread the self time of each kind of event (style,
// layout, paint, script...). Used by smooth.test.js with PERF_TRACE=1.

const CATEGORIES = ['toplevel', 'devtools.timeline', 'disabled-by-default-devtools.timeline', 'blink', 'cc', 'viz'].join(',');

/** Start tracing `page`; the returned function stops and resolves to the summary. */
export async function startTrace(page) {
  const cdp = await page.context().newCDPSession(page);
  const events = [];
  cdp.on('Tracing.dataCollected', ({ value }) => {
    for (const e of value) events.push(e);
  });
  const done = new Promise((resolve) => cdp.once('Tracing.tracingComplete', resolve));
  await cdp.send('Tracing.start', { traceConfig: { includedCategories: CATEGORIES.split(',') }, transferMode: 'ReportEvents' });
  const started = Date.now();
  return async () => {
    await cdp.send('Tracing.end');
    await done;
    await cdp.detach().catch(() => {});
    return summarize(events, Date.now() - started);
  };
}

function summarize(events, wallMs) {
  const names = new Map();
  for (const e of events) if (e.ph === 'M' && e.name === 'thread_name') names.set(`${e.pid}:${e.tid}`, e.args.name);
  const byThread = new Map();
  for (const e of events) {
    if (e.ph !== 'X' || typeof e.dur !== 'number') continue;
    const key = `${e.pid}:${e.tid}`;
    if (!byThread.has(key)) byThread.set(key, []);
    byThread.get(key).push(e);
  }
  const threads = [];
  let main = null;
  for (const [key, list] of byThread) {
    list.sort((a, b) => a.ts - b.ts || b.dur - a.dur);
    const self = new Map();
    const stack = [];
    let busy = 0;
    const frames = [];
    const roots = [];
    for (const e of list) {
      while (stack.length && stack[stack.length - 1].end <= e.ts) stack.pop();
      const parent = stack[stack.length - 1];
      const frame = { e, end: e.ts + e.dur, childDur: 0, root: parent ? parent.root : null };
      if (parent) parent.childDur += Math.min(e.dur, parent.end - e.ts);
      else {
        busy += e.dur;
        frame.root = { dur: e.dur, self: new Map() };
        roots.push(frame.root);
      }
      stack.push(frame);
      frames.push(frame);
    }
    for (const f of frames) {
      const own = Math.max(0, f.e.dur - f.childDur);
      self.set(f.e.name, (self.get(f.e.name) ?? 0) + own);
      f.root.self.set(f.e.name, (f.root.self.get(f.e.name) ?? 0) + own);
    }
    list.long = roots.filter((r) => r.dur > 50000);
    const name = names.get(key) ?? key;
    const entry = { thread: name, busyMs: Math.round(busy / 1000), self };
    threads.push(entry);
    if (name === 'CrRendererMain' && (!main || busy > main.busy)) main = { busy, self, long: list.long };
  }
  threads.sort((a, b) => b.busyMs - a.busyMs);
  const mainSelf = main ? [...main.self].sort((a, b) => b[1] - a[1]).slice(0, 16).map(([n, us]) => `${n} ${Math.round(us / 1000)}`) : [];
  return {
    wallMs,
    threadsBusyMs: threads.slice(0, 10).map((t) => `${t.thread} ${t.busyMs}`),
    mainSelfMs: mainSelf,
    // Main-thread tasks over 50 ms: their length and the three biggest self times inside.
    longTasks: (main?.long ?? []).map((r) => `${Math.round(r.dur / 1000)}: ${[...r.self].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([n, us]) => `${n} ${Math.round(us / 1000)}`).join(', ')}`),
  };
}
