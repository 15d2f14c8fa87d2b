// What the hub's browser test needs besides demo.mjs: a throwaway PostgreSQL
// cluster (Debian's server, initdb in a temporary directory, its own port on
// loopback and its own socket directory, stopped and removed at the end), and
// flashrack processes started with any arguments, their address read from a
// line they print.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { BIN } from './demo.mjs';

/** The newest installed PostgreSQL server's bin directory, or fails. */
export function postgresBin() {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(path.join(root, v, 'bin', 'postgres')))
      .sort((a, b) => Number(a) - Number(b))
    : [];
  assert.ok(versions.length > 0, 'PostgreSQL\'s server is not installed (no /usr/lib/postgresql/*/bin/postgres): run scripts/setup');
  return path.join(root, versions[versions.length - 1], 'bin');
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a throwaway cluster under `dir` (which it owns: as root, the cluster
 * runs as the `postgres` user, since PostgreSQL refuses root). Resolves with
 * `{ url, stop }`; `stop()` stops it at once (its data is thrown away anyway).
 */
export async function startPostgres(dir) {
  const bin = postgresBin();
  const root = process.getuid && process.getuid() === 0;
  const run = (program, args) => {
    const [file, argv] = root
      ? ['runuser', ['-u', 'postgres', '--', path.join(bin, program), ...args]]
      : [path.join(bin, program), args];
    return execFileSync(file, argv, { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  };
  mkdirSync(dir, { recursive: true });
  if (root) execFileSync('chown', ['postgres:postgres', dir]);
  const data = path.join(dir, 'data');
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--no-sync']);
  const port = await freePort();
  let started = false;
  const stop = () => {
    if (!started) return;
    started = false;
    try { run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']); } catch { /* gone already */ }
  };
  try {
    run('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-t', '60', '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, 'start']);
    started = true;
    run('createdb', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'flashrack']);
  } catch (error) {
    stop();
    throw new Error(`cannot start PostgreSQL: ${error.stderr || error.message}`);
  }
  return { url: `postgres://postgres@127.0.0.1:${port}/flashrack`, stop };
}

/**
 * Starts `flashrack ARGS`; resolves `url` with the first match of `pattern`
 * (its first group) in its output. The process gets `exited` (a promise) and
 * `log()` (its last output, for a failure's message).
 */
export function startFlashrack(args, pattern, what) {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  const keep = (chunk) => {
    log.push(chunk.toString());
    if (log.length > 200) log.shift();
  };
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.log = () => log.join('').slice(-4000);
  const url = new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${what}: no address printed within 60 s\n${child.log()}`)), 60_000);
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      out += chunk.toString();
      const match = out.match(pattern);
      if (match) {
        clearTimeout(timer);
        resolve(match[1].endsWith('/') ? match[1] : `${match[1]}/`);
      }
    });
    child.once('error', (error) => { clearTimeout(timer); reject(error); });
    child.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited early (code ${code}, signal ${signal})\n${child.log()}`));
    });
  });
  // A rejection nobody awaits (the process stopped at the end) is not an error.
  url.catch(() => {});
  return { child, url };
}

/** Runs `flashrack ARGS` to its end; returns its stdout, or fails with its stderr. */
export function flashrack(args) {
  return execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Writes a file readable by its owner only (token files must be). */
export function writePrivate(file, text) {
  writeFileSync(file, text, { mode: 0o600 });
}

/** Removes a directory tree, whatever is in it. */
export function removeTree(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Starts `flashrack demo` as station `name` of the hub at `hubUrl`: a hub
 * token added with `hubToml`, kept in a private file, and a station.toml
 * naming the hub, under `work/name`. `demoArgs` follow `demo`'s own
 * (`--ports`, `--image-size`, …). Returns what `startFlashrack` returns.
 */
export function startHubStation({ work, hubToml, hubUrl, name, demoArgs }) {
  const dir = path.join(work, name);
  mkdirSync(dir);
  const token = flashrack(['hub', '--config', hubToml, 'token', 'add', name]).trim();
  writePrivate(path.join(dir, 'hub-token'), `${token}\n`);
  writeFileSync(path.join(dir, 'station.toml'), [
    `station_id = "${name}"`,
    '[fleet]',
    `hub = "${hubUrl.replace(/\/$/, '')}"`,
    `token_file = "${path.join(dir, 'hub-token')}"`,
    '',
  ].join('\n'));
  return startFlashrack([
    '--data-dir', path.join(dir, 'data'), 'demo', '--config', path.join(dir, 'station.toml'),
    '--listen', '127.0.0.1:0', ...demoArgs,
  ], /dashboard: (http:\/\/\S+)/, `station ${name}`);
}
