'use strict';

// Runs example.js and each file in examples/ as a user would: start it, make one request on
// 127.0.0.1, send SIGTERM, and expect a clean exit (code 0). Also checks the debug trace of
// DEBUG=connect-session-knex and that nothing is printed without it.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { backends, quote, uniqueTable } = require('./helpers');

const repo = path.join(__dirname, '..');

/** Returns a TCP port that is free on 127.0.0.1 right now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

function get(port, pathname = '/') {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: pathname }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      })
      .on('error', reject);
  });
}

/**
 * Starts `script` with `env` in a temporary working folder, makes one request to `/`, sends
 * SIGTERM and waits for the exit. Returns the response, the exit and the output.
 * @param {string} script
 * @param {Record<string, string>} [env]
 */
async function runOnce(script, env = {}) {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-example-'));
  const port = await freePort();
  const childEnv = { ...process.env, PORT: String(port), ...env };
  delete childEnv.DEBUG;
  if (env.DEBUG) childEnv.DEBUG = env.DEBUG;
  process.stderr.write(`examples.test: $ node ${path.relative(repo, script)} (PORT=${port}, in ${cwd})\n`);
  const child = spawn(process.execPath, [script], { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    await new Promise((resolve, reject) => {
      const timer = setInterval(() => {
        if (stdout.includes('listening on')) {
          clearInterval(timer);
          resolve(undefined);
        }
      }, 20);
      exited.then(() => {
        clearInterval(timer);
        reject(new Error(`${script} exited before listening:\n${stderr}`));
      });
    });
    const response = await get(port);
    child.kill('SIGTERM');
    const exit = await exited;
    return { response, exit, stdout, stderr, cwd };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    fs.rmSync(cwd, { recursive: true, force: true });
  }
}

/** Returns the session id inside express-session's signed cookie. */
function sidOf(response) {
  const cookie = String(response.headers['set-cookie']);
  const value = decodeURIComponent(/connect\.sid=([^;]+)/.exec(cookie)[1]);
  return value.slice(2, value.lastIndexOf('.'));
}

test('example.js serves and exits on SIGTERM', async () => {
  const { response, exit, stderr } = await runOnce(path.join(repo, 'example.js'));
  assert.equal(response.status, 200);
  assert.equal(response.body, 'views: 1\n');
  assert.deepEqual(exit, { code: 0, signal: null }, stderr);
  assert.equal(stderr, '', 'the store printed something without DEBUG');
});

test('DEBUG traces one request', async () => {
  const { response, exit, stderr } = await runOnce(path.join(repo, 'example.js'), { DEBUG: 'connect-session-knex' });
  assert.equal(response.status, 200);
  assert.deepEqual(exit, { code: 0, signal: null }, stderr);
  const sid = sidOf(response);
  const lines = stderr.trim().split('\n');
  const expected = [
    /connect-session-knex set up SQLite file connect-session-knex\.sqlite, table sessions \(sid column sid/,
    /connect-session-knex ready in [\d.]+ ms: table sessions checked or created/,
    /connect-session-knex cleanup removed 0 expired rows in [\d.]+ ms/,
    new RegExp(`connect-session-knex set ${sid.slice(0, 6).replace(/[^\w]/g, '\\$&')}…: ok in [\\d.]+ ms`),
    /connect-session-knex closing the pool/,
    /connect-session-knex closed/,
  ];
  for (const pattern of expected) {
    assert.ok(
      lines.some((line) => pattern.test(line)),
      `no line matches ${pattern}:\n${stderr}`,
    );
  }
  assert.ok(!stderr.includes(sid), 'the trace holds a whole sid');
});

for (const [name, file] of [
  ['postgres', 'postgres.js'],
  ['mysql', 'mysql.js'],
]) {
  const backend = backends.find((candidate) => candidate.name === name);
  test(`examples/${file} serves and exits on SIGTERM`, { skip: backend.skip }, async (t) => {
    const url = backend.url();
    const table = uniqueTable('example');
    t.after(async () => {
      const raw = await backend.raw(url);
      await raw.query(`DROP TABLE IF EXISTS ${quote(backend, table)}`);
      await raw.close();
    });
    const { response, exit, stderr } = await runOnce(path.join(repo, 'examples', file), {
      DATABASE_URL: url,
      SESSION_TABLE: table,
    });
    assert.equal(response.status, 200);
    assert.equal(response.body, 'views: 1\n');
    assert.deepEqual(exit, { code: 0, signal: null }, stderr);
    assert.equal(stderr, '');
  });
}
