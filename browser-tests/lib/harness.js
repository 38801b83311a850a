// Test harness: the real smart-server binary, real device websockets, a real headless Chromium.
// Every wait is bounded; every process and temp dir started here is cleaned up by the caller's `after`.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const TARGET_DIR = process.env.CARGO_TARGET_DIR ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR) : path.join(REPO_ROOT, 'target');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Resolve once `fn()` is truthy, polling; throws after `timeoutMs` with `what` in the message. */
export async function waitUntil(fn, { timeout: timeoutMs = 5000, intervalMs = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

let builtBinary;

/**
 * The smart-server binary: `SMART_SERVER_BIN` if set, else `cargo build -p smart-server` (once per
 * process; a no-op when up to date) and target/debug/smart-server.
 */
export function serverBinary() {
  if (builtBinary) return builtBinary;
  if (process.env.SMART_SERVER_BIN) {
    builtBinary = path.resolve(process.env.SMART_SERVER_BIN);
    return builtBinary;
  }
  const build = spawnSync('cargo', ['build', '-p', 'smart-server', '--bin', 'smart-server'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 30 * 60 * 1000,
  });
  if (build.status !== 0) throw new Error(`cargo build -p smart-server failed (status ${build.status})`);
  builtBinary = path.join(TARGET_DIR, 'debug', 'smart-server');
  return builtBinary;
}

export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A running smart-server process. `port` stays the same across `restart()`. */
export class Server {
  constructor(dataDir, ownsDataDir, env = {}, bin = null) {
    this.bin = bin;
    this.dataDir = dataDir;
    this.ownsDataDir = ownsDataDir;
    this.env = env;
    this.port = 0;
    this.proc = null;
    this.log = [];
  }

  /** Start on an ephemeral port; without `dataDir`, in a fresh temp dir that `stop()` removes. `before`
   * runs on the data dir first (e.g. `Server.cli` to add users); `env` adds environment variables; `bin`
   * runs that binary instead of `serverBinary()` (the perf script's A/B runs). */
  static async start(dataDir, { env = {}, before = null, bin = null } = {}) {
    const server = new Server(dataDir ?? tempDir('smart-os-data-'), dataDir === undefined, env, bin);
    if (before) before(server.dataDir);
    await server.spawn(0);
    return server;
  }

  /** `smart-server --data-dir DIR ARGS…` with `input` on stdin: its stdout (throws on failure). */
  static cli(dataDir, args, input = '') {
    return execFileSync(serverBinary(), ['--data-dir', dataDir, ...args], { input, encoding: 'utf8' });
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsOrigin() {
    return `ws://127.0.0.1:${this.port}`;
  }

  async spawn(port) {
    const proc = spawn(this.bin ?? serverBinary(), ['--listen', `127.0.0.1:${port}`, '--data-dir', this.dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', ...this.env },
    });
    this.proc = proc;
    const exited = once(proc, 'exit');
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => this.keepLog(chunk));
    const lines = readline.createInterface({ input: proc.stdout });
    const listening = new Promise((resolve, reject) => {
      lines.on('line', (line) => {
        this.keepLog(`${line}\n`);
        const m = /^listening on 127\.0\.0\.1:(\d+)/.exec(line);
        if (m) resolve(Number(m[1]));
      });
      exited.then(([code, signal]) => reject(new Error(`smart-server exited (${code ?? signal}) before listening:\n${this.tail()}`)));
    });
    this.port = await withTimeout(listening, 30000, `smart-server to print its address\n${this.tail()}`);
  }

  keepLog(text) {
    this.log.push(text);
    if (this.log.length > 200) this.log.splice(0, this.log.length - 200);
  }

  tail() {
    return this.log.join('').split('\n').slice(-30).join('\n');
  }

  /** Kill without a chance to clean up (a crash or power cut), then wait for the exit. */
  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill(signal);
    await withTimeout(exited, 10000, 'smart-server to exit');
  }

  /** Start again on the same port and data dir; the OS may hold the port briefly, so retry. */
  async restart() {
    const port = this.port;
    const deadline = Date.now() + 15000;
    for (;;) {
      try {
        await this.spawn(port);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(200);
      }
    }
  }

  async stop() {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = once(proc, 'exit');
      proc.kill('SIGTERM');
      try {
        await withTimeout(exited, 5000, 'smart-server to shut down');
      } catch {
        proc.kill('SIGKILL');
        await withTimeout(exited, 5000, 'smart-server to die');
      }
    }
    if (this.ownsDataDir) fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  async getJson(pathname) {
    const res = await fetch(`${this.origin}${pathname}`, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`GET ${pathname}: ${res.status}`);
    return res.json();
  }
}

/**
 * A `redis-server` of the test's own on a free loopback port, with its own directory (append-only, synced
 * on every write), as `smart-server/tests/common/cluster.rs` starts one. `kill()` is a crash; `restart()`
 * starts it again on the same port and directory (what it had synced comes back); `stop()` kills it and
 * removes the directory. `RedisServer.available()` says whether `redis-server` is installed.
 */
export class RedisServer {
  constructor(port, dir) {
    this.port = port;
    this.dir = dir;
    this.proc = null;
  }

  static available() {
    return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
  }

  static async start() {
    const redis = new RedisServer(await freePort(), tempDir('smart-os-redis-'));
    await redis.restart();
    return redis;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async restart() {
    if (this.proc) throw new Error('redis-server is running');
    const args = ['--bind', '127.0.0.1', '--port', String(this.port), '--dir', this.dir];
    args.push('--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--daemonize', 'no', '--logfile', '');
    const proc = spawn('redis-server', args, { stdio: 'ignore' });
    this.proc = proc;
    const deadline = Date.now() + 10000;
    while (!(await this.ping())) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`redis-server exited (${proc.exitCode ?? proc.signalCode})`);
      if (Date.now() > deadline) throw new Error('redis-server did not answer PING within 10 s');
      await sleep(50);
    }
  }

  /** Whether it answers PING now. */
  ping() {
    return new Promise((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: this.port });
      let got = '';
      const done = (ok) => {
        socket.destroy();
        resolve(ok);
      };
      socket.setTimeout(1000, () => done(false));
      socket.on('error', () => done(false));
      socket.on('connect', () => socket.write('PING\r\n'));
      socket.on('data', (chunk) => {
        got += chunk;
        if (got.includes('\r\n')) done(got.startsWith('+PONG'));
      });
    });
  }

  /** SIGKILL, and wait until it is gone. */
  async kill() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, 'exit');
    proc.kill('SIGKILL');
    await withTimeout(exited, 10000, 'redis-server to exit');
  }

  async stop() {
    await this.kill();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A loopback port free now (for a process that cannot be told to pick its own and say which). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/**
 * One device-side websocket at /update/. It may speak for several serials, as a gateway would.
 * `send` resolves on the server's `MID:SERIAL:OK`, which the protocol sends only once stored.
 */
export class DeviceLink {
  constructor(ws) {
    this.ws = ws;
    this.mid = 0;
    this.waiting = new Map();
    ws.on('message', (data) => this.onMessage(String(data)));
    ws.on('close', () => {
      for (const { reject } of this.waiting.values()) reject(new Error('device socket closed'));
      this.waiting.clear();
    });
  }

  /** A device connection; `token` is its device token when the server requires one. */
  static async connect(server, { token = null } = {}) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const ws = new WebSocket(`${server.wsOrigin}/update/`, { handshakeTimeout: 5000, headers });
    await withTimeout(once(ws, 'open'), 5000, 'device websocket to open');
    return new DeviceLink(ws);
  }

  onMessage(text) {
    let env;
    try {
      env = JSON.parse(text);
    } catch {
      return;
    }
    const m = /^(\d+):([^:]+):(OK|ERROR)$/.exec(String(env.message));
    if (!m) return;
    const key = `${m[1]}:${m[2]}`;
    const waiter = this.waiting.get(key);
    if (!waiter) return;
    this.waiting.delete(key);
    if (m[3] === 'OK') waiter.resolve();
    else waiter.reject(new Error(`server refused ${key}: ${env.reason}`));
  }

  /** Send INIT or UPDT for `serial` with `body`; resolves when acknowledged. */
  send(kind, serial, body) {
    this.mid += 1;
    const mid = String(this.mid).padStart(4, '0');
    const key = `${mid}:${serial}`;
    const acked = new Promise((resolve, reject) => this.waiting.set(key, { resolve, reject }));
    this.ws.send(JSON.stringify({ type: kind, message: `${key}:${JSON.stringify(body)}` }));
    return withTimeout(acked, 10000, `ack of ${key}`);
  }

  update(serial, body) {
    return this.send('UPDT', serial, body);
  }

  async close() {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const closed = once(this.ws, 'close');
    this.ws.close();
    await withTimeout(closed, 5000, 'device websocket to close').catch(() => this.ws.terminate());
  }
}

export const serialOf = (i) => String(i).padStart(4, '0');

const COUNTRIES = ['AT', 'DE', 'CH', 'IT', 'NL', 'SI'];

/** A plausible INIT body for device `i`, as the reference Python device sends it (underscores and all). */
export function deviceInit(i, overrides = {}) {
  const serial = serialOf(i);
  const hour = 8 + (i % 9);
  return {
    serial_number: serial,
    solmate_version: i % 4 === 0 ? 'v2' : 'v1',
    _software_version: `v8.${i % 7}`,
    _country: COUNTRIES[i % COUNTRIES.length],
    _postcode: 1010 + ((i * 373) % 8900),
    _power_income: 120 + ((i * 37) % 380),
    _power_inject: (i * 53) % 340,
    _power_consumption: 90 + ((i * 71) % 410),
    _battery: (i * 29) % 101,
    _capacity: 5184000,
    _local_time: `2024-03-17 ${String(hour).padStart(2, '0')}:${String((i * 7) % 60).padStart(2, '0')}:13.047108`,
    server_url: 'ws://localhost:8000/update/',
    websocket: '',
    connected: true,
    publish: true,
    message_id: '0000',
    message_queue: {},
    tasks: '',
    meassuring: true,
    charging: i % 3 !== 0,
    injecting: i % 5 === 0,
    pv_connectors: 1 + (i % 3),
    ...overrides,
  };
}

/** Register devices 1..n over one link (in parallel, bounded by the acks). */
export async function registerFleet(link, n, overrides = () => ({})) {
  await Promise.all(Array.from({ length: n }, (_, k) => link.send('INIT', serialOf(k + 1), deviceInit(k + 1, overrides(k + 1)))));
}

/** A fresh headless Chromium with its own profile directory. */
export async function openBrowser({ viewport = { width: 1440, height: 900 }, colorScheme = 'light', ...options } = {}) {
  const profiles = [];
  const launch = () => chromium.launchPersistentContext(profiles[profiles.push(tempDir('smart-os-chromium-')) - 1], {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    headless: true,
    viewport,
    colorScheme,
    acceptDownloads: true,
    timeout: 30000,
    ...options,
  });
  let context;
  try {
    context = await launch();
  } catch (err) {
    // Debian's Chromium sometimes dies at start in containers (seen in CI: SIGSEGV before the first
    // page, with no page loaded yet). Start it once more, in a fresh profile; a second failure is real.
    console.error(`chromium failed to start, retrying once: ${err.message.split('\n')[0]}`);
    context = await launch();
  }
  context.setDefaultTimeout(10000);
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
  });
  return {
    context,
    page,
    problems,
    // The profile directory of the running Chromium (perf/cpu.js finds its processes by it).
    profile: profiles[profiles.length - 1],
    async close() {
      await context.close().catch(() => {});
      for (const profile of profiles) fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Reading the page. The table renders only the visible window of rows; these helpers read what the
// user sees, and `allSerials` scrolls through the whole list like a user would.

export const rowSelector = (serial) => `#body tr[data-serial="${serial}"]`;
export const cellSelector = (serial, field) => `${rowSelector(serial)} td[data-field="${field}"]`;

/** Serials of the rendered rows, top to bottom. */
export function renderedSerials(page) {
  return page.$$eval('#body tr[data-serial]', (rows) => rows.map((r) => r.dataset.serial));
}

/** The text of the result count (digits only, as a number). */
export async function resultCount(page) {
  const text = await page.textContent('#result-count');
  return Number(String(text).replace(/\D/g, ''));
}

/** Every serial in the view, in order, by scrolling the table from top to bottom. */
export async function allSerials(page) {
  const seen = [];
  const known = new Set();
  await page.$eval('#scroller', (el) => {
    el.scrollTop = 0;
  });
  for (let step = 0; step < 500; step += 1) {
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    for (const s of await renderedSerials(page)) {
      if (!known.has(s)) {
        known.add(s);
        seen.push(s);
      }
    }
    const atEnd = await page.$eval('#scroller', (el) => {
      const end = el.scrollTop + el.clientHeight >= el.scrollHeight - 1;
      el.scrollTop += Math.max(1, el.clientHeight - 60);
      return end;
    });
    if (atEnd) break;
  }
  await page.$eval('#scroller', (el) => {
    el.scrollTop = 0;
  });
  return seen;
}

/** Wait until the connection pill says Live. */
export function waitLive(page, timeout = 10000) {
  return page.waitForSelector('#conn[data-state="live"]', { timeout });
}
