'use strict';

// The debug log under DEBUG=connect-session-knex: what it shows, and that it never shows a
// whole sid or a password. examples.test.js checks the same through the environment variable.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const createDebug = require('debug');

const { KnexSessionStore } = require('..');
const { log, shortSid, redactUrl, describeTarget } = require('../lib/debug');
const { tmpFile } = require('./helpers');

/** Collects the lines the store logs while `work` runs, with the log turned on. */
async function capture(work) {
  const lines = [];
  const previous = createDebug.disable();
  log.log = (...args) => lines.push(util.format(...args));
  createDebug.enable('connect-session-knex');
  try {
    await work();
  } finally {
    createDebug.disable();
    if (previous) createDebug.enable(previous);
    delete log.log;
  }
  return lines;
}

test('log is off without DEBUG', () => {
  if (process.env.DEBUG) return;
  assert.ok(!log.enabled);
});

test('shortSid keeps six characters', () => {
  assert.equal(shortSid('abcdefghij'), 'abcdef…');
  assert.equal(shortSid('abcdef'), 'abcdef');
  assert.equal(shortSid('abc'), 'abc');
  assert.equal(shortSid('😀😀😀😀😀😀😀'), '😀😀😀😀😀😀…');
  assert.equal(shortSid(''), '(empty)');
  assert.equal(shortSid(42), '(number)');
});

test('redactUrl masks passwords', () => {
  assert.equal(redactUrl('postgres://u:secret@127.0.0.1:5432/db'), 'postgres://u:***@127.0.0.1:5432/db');
  assert.equal(redactUrl('mysql://u@h/db?password=secret'), 'mysql://u@h/db?password=***');
  assert.equal(redactUrl('postgres://u:se cret@[bad/db'), 'postgres://***@[bad/db');
  assert.equal(redactUrl('sqlite::memory:'), 'sqlite::memory:');
});

test('describeTarget omits the password', () => {
  const text = describeTarget({
    client: 'postgres',
    host: '127.0.0.1',
    port: 5432,
    user: 'app',
    password: 'secret',
    database: 'app',
    sslMode: 'require',
  });
  assert.equal(text, 'PostgreSQL 127.0.0.1:5432/app, user app, ssl require');
  assert.equal(describeTarget({ client: 'sqlite', filename: 'x.sqlite' }), 'SQLite file x.sqlite');
});

test('log traces setup, calls and close', async () => {
  const sid = 'abcdefghijklmnopqrstuvwxyz012345';
  const lines = await capture(async () => {
    const store = new KnexSessionStore({ knex: `sqlite://${tmpFile()}`, cleanupInterval: 60000 });
    await store.ready;
    await store.set(sid, { cookie: { maxAge: 60000 } });
    await store.get(sid);
    await store.get('unknown-sid');
    await store.destroy(sid);
    await store.length();
    await store.get('').catch(() => {});
    await store.close();
  });
  const expected = [
    /^set up SQLite sqlite:\/\/.*sessions\.sqlite, table sessions \(sid column sid, createTable true\), cleanup every 60000 ms, pool defaults, queryTimeoutMillis 15000$/,
    /^ready in [\d.]+ ms: table sessions checked or created$/,
    /^cleanup removed 0 expired rows in [\d.]+ ms$/,
    /^set abcdef…: ok in [\d.]+ ms$/,
    /^get abcdef…: found in [\d.]+ ms$/,
    /^get unknow…: no session in [\d.]+ ms$/,
    /^destroy abcdef…: 1 row deleted in [\d.]+ ms$/,
    /^length: 0 live sessions in [\d.]+ ms$/,
    /^get \(empty\) failed in [\d.]+ ms: ERR_INVALID_ARGUMENT sid must be a non-empty string/,
    /^closing the pool$/,
    /^closed$/,
  ];
  const text = lines.map((line) => line.replace(/^\S+ connect-session-knex /, '')).join('\n');
  for (const pattern of expected) {
    assert.ok(
      text.split('\n').some((line) => pattern.test(line)),
      `no line matches ${pattern}:\n${text}`,
    );
  }
  assert.ok(!text.includes(sid), 'the log holds a whole sid');
});

test('log traces a setup failure and its retry', async () => {
  // A SQLite file in a folder that does not exist yet fails the setup until it is created.
  const dir = path.join(path.dirname(tmpFile()), 'later');
  const lines = await capture(async () => {
    const store = new KnexSessionStore({ knex: `sqlite://${path.join(dir, 's.sqlite')}`, disableDbCleanup: true });
    await assert.rejects(store.ready, { code: 'ERR_CONNECTION_FAILED' });
    await assert.rejects(store.length(), { code: 'ERR_CONNECTION_FAILED' });
    fs.mkdirSync(dir);
    assert.equal(await store.length(), 0);
    await store.close();
  });
  const text = lines.map((line) => line.replace(/^\S+ connect-session-knex /, '')).join('\n');
  assert.match(text, /^setup failed after [\d.]+ ms: ERR_CONNECTION_FAILED .*; the next call retries it$/m);
  assert.match(text, /^length failed in [\d.]+ ms \(retrying the setup\): ERR_CONNECTION_FAILED /m);
  assert.match(text, /^setup retried by length and succeeded: the store is ready$/m);
  assert.match(text, /^length: 0 live sessions in [\d.]+ ms$/m);
});

test('log never shows the password', async () => {
  const lines = await capture(async () => {
    const store = new KnexSessionStore({
      knex: 'postgres://app:hunter2@127.0.0.1:1/app?password=hunter2',
      disableDbCleanup: true,
      queryTimeoutMillis: 2000,
    });
    await store.ready.catch(() => {});
    await store.close();
  });
  const text = lines.join('\n');
  assert.match(text, /set up PostgreSQL postgres:\/\/app:\*\*\*@127\.0\.0\.1:1\/app\?password=\*\*\*/);
  assert.match(text, /setup failed after/);
  assert.ok(!text.includes('hunter2'), text);
});
