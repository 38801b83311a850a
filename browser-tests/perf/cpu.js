// CPU time that Chromium's threads used over a window, from /proc (Linux): unlike frame rates and wall
// times, it does not grow when other work on the machine takes the cores, so two pages can be compared
// on a busy machine. Threads are grouped by process type and name (renderer/chromium is the page's main thread).

import fs from 'node:fs';

const TICK_MS = 10; // USER_HZ is 100 on Linux

function read(file) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Pids of the Chromium started with profile directory `profile`, and of all its descendants. */
function chromiumPids(profile) {
  const parent = new Map();
  let root = null;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = read(`/proc/${name}/stat`);
    if (!stat) continue;
    parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    if (root === null && (read(`/proc/${name}/cmdline`) ?? '').includes(profile)) root = Number(name);
  }
  if (root === null) return [];
  // The profile's first process may be a wrapper script: the browser and everything below it.
  const pids = [root];
  for (let i = 0; i < pids.length; i += 1) for (const [pid, ppid] of parent) if (ppid === pids[i]) pids.push(pid);
  return pids;
}

/** CPU ms per thread name now, summed over the processes of that Chromium. */
export function cpuByThread(profile) {
  const out = new Map();
  for (const pid of chromiumPids(profile)) {
    // The process's type (renderer, gpu-process, utility; none for the browser) before the thread name.
    const type = /--type=([\w-]+)/.exec(read(`/proc/${pid}/cmdline`) ?? '')?.[1] ?? 'browser';
    let tids = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      const stat = read(`/proc/${pid}/task/${tid}/stat`);
      if (!stat) continue;
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ms = (Number(f[11]) + Number(f[12])) * TICK_MS;
      const key = `${type}/${name}`;
      out.set(key, (out.get(key) ?? 0) + ms);
    }
  }
  return out;
}

/** CPU ms per thread name between two `cpuByThread` readings, biggest first, and the total. */
export function cpuDelta(before, after) {
  const rows = [];
  let total = 0;
  for (const [name, ms] of after) {
    const d = ms - (before.get(name) ?? 0);
    total += d;
    if (d > 0) rows.push([name, d]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  return { total, threads: rows };
}

/** CPU ms a process (all its threads) has used, from /proc/PID/stat; 0 when it is gone. */
export function processCpuMs(pid) {
  const stat = read(`/proc/${pid}/stat`);
  if (!stat) return 0;
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}
