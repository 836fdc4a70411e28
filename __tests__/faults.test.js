'use strict';

// Fault tests: while the database restarts, drops connections, runs out of pooled connections or
// is locked by another process, the store settles every call, fails only with documented error
// codes, and loses no session it acknowledged. These tests stop and reconfigure servers, so
// PostgreSQL and MariaDB run as private servers started by servers.js, and the shared servers
// other suites use are never touched. SQLite runs on files under the same /tmp folder.
//
// helpers.js is not used here: it requires PG_URL and MYSQL_URL under CI=true, and these tests
// need neither.
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { after, before, describe, it } = require('node:test');

const { KnexSessionStore } = require('..');
const servers = require('./servers');

const FIXTURES = path.join(__dirname, 'fixtures');

/** Codes the README gives for a database that cannot be reached or broke a connection. */
const OUTAGE_CODES = new Set([
  'ERR_CONNECTION_FAILED',
  'ERR_CONNECTION_LOST',
  'ERR_POOL_TIMEOUT',
  'ERR_QUERY_TIMEOUT',
  'ERR_DATABASE',
]);

/** Lenient bound for calls to settle once a fault is over, not a speed target. */
const SETTLE_BOUND_MS = 10000;

/** Bound of each test, so a hung call fails its test instead of the whole run. */
const TEST_TIMEOUT_MS = 60000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let tableCounter = 0;

/** Returns a table name unique to this process. */
function uniqueTable() {
  tableCounter += 1;
  return `fault_${process.pid}_${tableCounter}`;
}

/** Returns a session shaped like express-session's, numbered by `n`. */
function session(n) {
  return { cookie: { maxAge: 600000 }, n };
}

/** Returns why a private server kind is skipped, or undefined. Under CI=true a missing binary throws instead. */
function skipReason(kind, label) {
  const missing = servers.missingBinaries(kind);
  if (missing.length === 0) return undefined;
  if (process.env.CI === 'true') {
    throw new Error(`${label} binaries are missing (${missing.join(', ')}), and CI=true requires them`);
  }
  return `${label} binaries are missing: ${missing.join(', ')}`;
}

/**
 * Counts unhandled rejections and uncaught exceptions until the test ends.
 * @param {import('node:test').TestContext} t
 */
function watchProcess(t) {
  const rejections = [];
  const exceptions = [];
  const onRejection = (reason) => rejections.push(reason);
  const onException = (error) => exceptions.push(error);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtExceptionMonitor', onException);
  t.after(() => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtExceptionMonitor', onException);
  });
  return { rejections, exceptions };
}

/** Asserts that nothing reached the process as an unhandled rejection or uncaught exception. */
async function assertNoStrayErrors(watch) {
  // A rejection counts as unhandled only after the microtask queue drains.
  await sleep(50);
  assert.deepEqual(watch.rejections.map(String), [], 'unhandled rejections');
  assert.deepEqual(watch.exceptions.map(String), [], 'uncaught exceptions');
}

/**
 * @typedef {object} Call
 * @property {'pending' | 'fulfilled' | 'rejected'} state
 * @property {any} value
 * @property {any} error
 * @property {number} startedAt
 * @property {number | undefined} settledAt
 * @property {Promise<void>} done  resolves when the call settles, whichever way
 * @property {Record<string, any>} info  what the call was, for messages
 */

/**
 * Follows a store call without awaiting it.
 * @returns {Call}
 */
function track(promise, info = {}) {
  /** @type {Call} */
  const call = { state: 'pending', value: undefined, error: undefined, startedAt: Date.now(), settledAt: undefined };
  call.info = info;
  call.done = promise.then(
    (value) => {
      call.state = 'fulfilled';
      call.value = value;
      call.settledAt = Date.now();
    },
    (error) => {
      call.state = 'rejected';
      call.error = error;
      call.settledAt = Date.now();
    },
  );
  return call;
}

/** Waits until every call settled or `boundMs` passed, and returns the calls still pending. */
async function pendingAfter(calls, boundMs) {
  let timer;
  const bound = new Promise((resolve) => {
    timer = setTimeout(resolve, boundMs);
  });
  await Promise.race([Promise.all(calls.map((call) => call.done)), bound]);
  clearTimeout(timer);
  return calls.filter((call) => call.state === 'pending');
}

/** Describes calls for assertion messages: what each was, and its error code and message. */
function describeCalls(calls) {
  return calls
    .slice(0, 10)
    .map((call) => {
      const outcome = call.error ? `${call.error.code}: ${String(call.error.message).slice(0, 200)}` : call.state;
      return `${JSON.stringify(call.info)} -> ${outcome}`;
    })
    .join('\n');
}

/** Summarises how calls ended, such as `12 fulfilled, 3 ERR_POOL_TIMEOUT`, for test diagnostics. */
function outcomes(calls) {
  const counts = new Map();
  for (const call of calls) {
    const key = call.state === 'rejected' ? String(call.error && call.error.code) : call.state;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  return [...counts].map(([key, count]) => `${count} ${key}`).join(', ');
}

/** Returns the rejected calls whose error code is not in `codes`. */
function rejectedOutside(calls, codes) {
  return calls.filter((call) => call.state === 'rejected' && !codes.has(call.error && call.error.code));
}

/** Polls `predicate` every 50 ms and resolves true once it holds, or false after `boundMs`. */
async function waitFor(predicate, boundMs) {
  const deadline = Date.now() + boundMs;
  while (Date.now() < deadline) {
    if (await predicate()) return true;
    await sleep(50);
  }
  return predicate();
}

/** Resolves with `promise`, or with 'timeout' after `boundMs`, so a hung close cannot hang the run. */
async function within(promise, boundMs) {
  let timer;
  const bound = new Promise((resolve) => {
    timer = setTimeout(resolve, boundMs, 'timeout');
  });
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Creates a store that is closed when the test ends.
 * @param {import('node:test').TestContext} t
 */
function openStore(t, url, tableName, options = {}) {
  const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0, ...options });
  t.after(() => within(store.close(), SETTLE_BOUND_MS));
  return store;
}

/**
 * Starts `node <fixture> <args>` and kills it by pid after 30 s. `line(key)` resolves with the
 * first JSON line it prints that has `key`, and `exited` with its exit code and output.
 */
function runFixture(name, args) {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, [path.join(FIXTURES, name), ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  const listeners = [];
  let partial = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop();
    for (const text of parts) lines.push(JSON.parse(text));
    for (const listener of listeners) listener();
  });
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const timer = setTimeout(() => process.kill(child.pid, 'SIGKILL'), 30000);
  const exited = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, lines, stderr });
    });
  });
  const line = (key) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const found = lines.find((entry) => key in entry);
        if (found) resolve(found);
      };
      listeners.push(check);
      check();
      exited.then(() => reject(new Error(`${name} exited without printing ${key}: ${stderr}`)));
    });
  return { exited, line };
}

// What each private server kind needs beyond its URL: quoting, a table lock that blocks every
// read of the table until `unlock`, and SQL that lists and ends other sessions of the database.
const POSTGRES = {
  quote: (name) => `"${name}"`,
  lock: async (raw, table) => {
    await raw.query('BEGIN');
    await raw.query(`LOCK TABLE "${table}" IN ACCESS EXCLUSIVE MODE`);
  },
  unlock: (raw) => raw.query('ROLLBACK'),
  /** Ends every other session of the database, as an administrator would. */
  terminateOthers: async (raw) =>
    (
      await raw.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
      )
    ).length,
  otherSessions: async (raw) =>
    (
      await raw.query(
        'SELECT pid AS id FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
      )
    ).map((row) => row.id),
  blockedSessions: async (raw) =>
    (
      await raw.query(
        "SELECT pid AS id FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      )
    ).map((row) => row.id),
  terminate: (raw, id) => raw.query('SELECT pg_terminate_backend(?)', [id]),
};

const MARIADB = {
  quote: (name) => `\`${name}\``,
  lock: (raw, table) => raw.query(`LOCK TABLES \`${table}\` WRITE`),
  unlock: (raw) => raw.query('UNLOCK TABLES'),
  terminateOthers: async (raw) => {
    const ids = await MARIADB.otherSessions(raw);
    for (const id of ids) await MARIADB.terminate(raw, id);
    return ids.length;
  },
  otherSessions: async (raw) =>
    (
      await raw.query(
        'SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()',
      )
    ).map((row) => Number(row.id)),
  blockedSessions: async (raw) =>
    (
      await raw.query(
        "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND STATE = 'Waiting for table metadata lock'",
      )
    ).map((row) => Number(row.id)),
  terminate: (raw, id) => raw.query(`KILL CONNECTION ${Number(id)}`),
};

/** Returns the sids stored in a table of a private server, read with a raw connection. */
async function storedSids(server, kind, tableName) {
  const raw = await server.raw();
  try {
    const rows = await raw.query(`SELECT sid FROM ${kind.quote(tableName)}`);
    return new Set(rows.map((row) => row.sid));
  } finally {
    await raw.close();
  }
}

/** Returns the sids stored in a table of a SQLite file. Call it only while no store has the file open. */
function storedSqliteSids(file, tableName) {
  const Database = require('better-sqlite3');
  const db = new Database(file, { readonly: true });
  try {
    return new Set(
      db
        .prepare(`SELECT sid FROM "${tableName}"`)
        .all()
        .map((row) => row.sid),
    );
  } finally {
    db.close();
  }
}

/**
 * Stops the server, or crashes it when `crash` is true, during a stream of sets and gets (one
 * pair every 100 ms) and starts it again 3 s later. Checks that the store fails only with outage
 * codes, recovers within 5 s of the server being back, and keeps every session it acknowledged.
 */
async function checkRestart(t, server, kind, { crash = false } = {}) {
  const watch = watchProcess(t);
  const tableName = uniqueTable();
  const store = openStore(t, server.url, tableName, { pool: { acquireTimeoutMillis: 2000 } });
  await store.set('warm', session(0));

  /** @type {Call[]} */
  const calls = [];
  /** Sessions the store acknowledged, by sid, with the `n` they were stored with. */
  const acknowledged = new Map([['warm', 0]]);
  let n = 0;
  const issue = () => {
    n += 1;
    const sid = `s${n}`;
    const stored = n;
    const set = track(store.set(sid, session(stored)), { op: 'set', sid });
    set.done.then(() => {
      if (set.state === 'fulfilled') acknowledged.set(sid, stored);
    });
    calls.push(set);
    const known = [...acknowledged.keys()];
    const readSid = known[n % known.length];
    calls.push(track(store.get(readSid), { op: 'get', sid: readSid, expected: acknowledged.get(readSid) }));
  };
  const interval = setInterval(issue, 100);
  t.after(() => clearInterval(interval));

  await sleep(1000);
  const acknowledgedBeforeRestart = new Map(acknowledged);
  const stoppedAt = Date.now();
  await (crash ? server.crash() : server.stop());
  t.after(() => server.start());
  // Longer than acquireTimeoutMillis, so calls made early in the outage time out while it lasts.
  await sleep(3000);
  await server.start();
  const backAt = Date.now();

  const firstSuccessAfterBack = () => calls.find((call) => call.startedAt >= backAt && call.state === 'fulfilled');
  const recovered = await waitFor(() => firstSuccessAfterBack() !== undefined, 5000);
  await sleep(1000);
  clearInterval(interval);

  const pending = await pendingAfter(calls, SETTLE_BOUND_MS);
  const during = calls.filter((call) => call.startedAt >= stoppedAt && call.startedAt < backAt);
  t.diagnostic(`calls made while the server was down: ${outcomes(during)}`);
  if (recovered) t.diagnostic(`first success started ${firstSuccessAfterBack().startedAt - backAt} ms after the start`);
  assert.equal(pending.length, 0, `calls still pending:\n${describeCalls(pending)}`);

  const uncoded = rejectedOutside(calls, OUTAGE_CODES);
  assert.equal(uncoded.length, 0, `calls failed without an outage code:\n${describeCalls(uncoded)}`);

  const outageFailures = calls.filter(
    (call) => call.state === 'rejected' && call.startedAt >= stoppedAt && call.startedAt < backAt,
  );
  assert.ok(outageFailures.length > 0, 'no call failed while the server was down, so the outage was not observed');

  assert.ok(recovered, 'no call started after the server was back succeeded within 5 s');

  const recoveredAt = recovered ? firstSuccessAfterBack().startedAt : Infinity;
  const failedAfterRecovery = calls.filter((call) => call.startedAt > recoveredAt && call.state === 'rejected');
  assert.equal(failedAfterRecovery.length, 0, `calls failed after recovery:\n${describeCalls(failedAfterRecovery)}`);

  const wrongReads = calls.filter(
    (call) =>
      call.info.op === 'get' &&
      call.state === 'fulfilled' &&
      JSON.stringify(call.value) !== JSON.stringify(session(call.info.expected)),
  );
  assert.equal(wrongReads.length, 0, `gets returned another value:\n${describeCalls(wrongReads)}`);

  const unreadable = [];
  for (const [sid, stored] of acknowledgedBeforeRestart) {
    const found = await store.get(sid);
    if (JSON.stringify(found) !== JSON.stringify(session(stored))) unreadable.push(sid);
  }
  assert.deepEqual(unreadable, [], 'sessions acknowledged before the restart that get does not return');

  const rows = await storedSids(server, kind, tableName);
  const lost = [...acknowledged.keys()].filter((sid) => !rows.has(sid));
  assert.deepEqual(lost, [], 'acknowledged sessions missing from the table');

  await assertNoStrayErrors(watch);
}

/**
 * Creates a store while the server is stopped, without awaiting `ready`, and checks that calls
 * fail with coded errors until the server starts and succeed within 10 s after.
 */
async function checkStartWhileDown(t, server) {
  const watch = watchProcess(t);
  await server.stop();
  t.after(() => server.start());
  const store = openStore(t, server.url, uniqueTable(), { pool: { acquireTimeoutMillis: 2000 } });
  await sleep(1000);
  assert.equal(watch.rejections.length, 0, 'the failed setup became an unhandled rejection');

  const failing = [track(store.get('a'), { op: 'get' }), track(store.set('a', session(1)), { op: 'set' })];
  const pending = await pendingAfter(failing, SETTLE_BOUND_MS);
  t.diagnostic(`calls while the server was down: ${outcomes(failing)}`);
  assert.equal(pending.length, 0, `calls still pending:\n${describeCalls(pending)}`);
  const succeeded = failing.filter((call) => call.state === 'fulfilled');
  assert.equal(succeeded.length, 0, `calls succeeded while the server was down:\n${describeCalls(succeeded)}`);
  const uncoded = rejectedOutside(failing, OUTAGE_CODES);
  assert.equal(uncoded.length, 0, `calls failed without an outage code:\n${describeCalls(uncoded)}`);

  await server.start();
  const attempts = [];
  const recovered = await waitFor(async () => {
    const set = track(store.set('a', session(2)), { op: 'set' });
    attempts.push(set);
    await set.done;
    if (set.state !== 'fulfilled') return false;
    const get = track(store.get('a'), { op: 'get' });
    attempts.push(get);
    await get.done;
    return get.state === 'fulfilled';
  }, 10000);
  assert.ok(recovered, `set and get did not succeed within 10 s of the start:\n${describeCalls(attempts.slice(-2))}`);
  assert.deepEqual(await store.get('a'), session(2));
  const uncodedAttempts = rejectedOutside(attempts, OUTAGE_CODES);
  assert.equal(uncodedAttempts.length, 0, `calls failed without an outage code:\n${describeCalls(uncodedAttempts)}`);

  await assertNoStrayErrors(watch);
}

/**
 * Stops the server after the store is ready and calls every method in callback form, ignoring
 * the returned promises, as express-session does: each callback is called exactly once with a
 * coded error, and nothing reaches the process as an unhandled rejection.
 */
async function checkCallbacksWhileDown(t, server) {
  const watch = watchProcess(t);
  const store = openStore(t, server.url, uniqueTable(), {
    pool: { acquireTimeoutMillis: 1000 },
    queryTimeoutMillis: 3000,
  });
  await store.set('a', session(1));
  await server.stop();
  t.after(() => server.start());

  const calls = {
    get: (cb) => store.get('a', cb),
    set: (cb) => store.set('b', session(2), cb),
    touch: (cb) => store.touch('a', session(1), cb),
    destroy: (cb) => store.destroy('a', cb),
    length: (cb) => store.length(cb),
    clear: (cb) => store.clear(cb),
    all: (cb) => store.all(cb),
  };
  const seen = Object.fromEntries(Object.keys(calls).map((name) => [name, []]));
  for (const [name, call] of Object.entries(calls)) {
    call((error) => seen[name].push(error));
  }
  await waitFor(() => Object.values(seen).every((errors) => errors.length > 0), SETTLE_BOUND_MS);
  // Room for a second, wrong call of any callback.
  await sleep(500);
  for (const [name, errors] of Object.entries(seen)) {
    assert.equal(errors.length, 1, `${name} callback calls`);
    assert.ok(errors[0] instanceof Error, `${name} got ${errors[0]}`);
    assert.ok(OUTAGE_CODES.has(errors[0].code), `${name} failed with ${errors[0].code}: ${errors[0].message}`);
  }
  await assertNoStrayErrors(watch);
}

/**
 * Locks the table from a raw connection and fires ten gets, so that two block on the lock with
 * both pooled connections. Checks that the gets without a connection time out, that every call
 * settles once the lock is released, and that calls succeed after.
 */
async function checkFullPool(t, server, kind) {
  const watch = watchProcess(t);
  const tableName = uniqueTable();
  const store = openStore(t, server.url, tableName, { pool: { max: 2, acquireTimeoutMillis: 500 } });
  await store.set('a', session(1));

  const raw = await server.raw();
  const calls = [];
  let settledWhileLocked;
  try {
    await kind.lock(raw, tableName);
    try {
      for (let i = 0; i < 10; i += 1) calls.push(track(store.get('a'), { op: 'get', i }));
      // Longer than acquireTimeoutMillis, so the gets that found no free connection have timed out.
      await sleep(1500);
      settledWhileLocked = calls.filter((call) => call.state !== 'pending');
    } finally {
      await kind.unlock(raw);
    }
  } finally {
    await raw.close();
  }

  const pending = await pendingAfter(calls, SETTLE_BOUND_MS);
  assert.equal(pending.length, 0, `calls still pending after the lock was released:\n${describeCalls(pending)}`);

  t.diagnostic(`gets while the table was locked: ${outcomes(calls)}`);
  const timedOut = calls.filter((call) => call.state === 'rejected' && call.error.code === 'ERR_POOL_TIMEOUT');
  assert.ok(timedOut.length > 0, `no get failed with ERR_POOL_TIMEOUT:\n${describeCalls(calls)}`);
  assert.ok(settledWhileLocked.length > 0, 'no get settled while both connections were blocked');
  const uncoded = rejectedOutside(calls, new Set(['ERR_POOL_TIMEOUT']));
  assert.equal(uncoded.length, 0, `gets failed with another code:\n${describeCalls(uncoded)}`);
  const wrong = calls.filter(
    (call) => call.state === 'fulfilled' && JSON.stringify(call.value) !== JSON.stringify(session(1)),
  );
  assert.equal(wrong.length, 0, `gets returned another value:\n${describeCalls(wrong)}`);

  const afterwards = [];
  for (let i = 0; i < 10; i += 1) afterwards.push(track(store.get('a'), { op: 'get after release', i }));
  assert.equal((await pendingAfter(afterwards, SETTLE_BOUND_MS)).length, 0, 'gets after the release still pending');
  const failedAfterwards = afterwards.filter((call) => call.state !== 'fulfilled');
  assert.equal(failedAfterwards.length, 0, `gets failed after the release:\n${describeCalls(failedAfterwards)}`);

  await assertNoStrayErrors(watch);
}

/**
 * Starts 20 sets and closes the store at once, then checks that every call settled, every
 * acknowledged set is in the table, and calls after close fail with ERR_STORE_CLOSED.
 * @param {{ warm: boolean, url: string, tableName: string, readSids: () => Promise<Set<string>> | Set<string> }} target
 */
async function checkCloseInFlight(t, { warm, url, tableName, readSids }) {
  const watch = watchProcess(t);
  const store = new KnexSessionStore({ knex: url, tableName, cleanupInterval: 0 });
  if (warm) await store.set('warm', session(0));

  const sets = [];
  for (let i = 0; i < 20; i += 1) sets.push(track(store.set(`c${i}`, session(i)), { op: 'set', sid: `c${i}` }));
  const closing = track(store.close(), { op: 'close' });

  const pending = await pendingAfter([...sets, closing], SETTLE_BOUND_MS);
  t.diagnostic(`sets started before close: ${outcomes(sets)}`);
  assert.equal(pending.length, 0, `calls still pending after close:\n${describeCalls(pending)}`);
  assert.equal(closing.state, 'fulfilled', `close did not resolve:\n${describeCalls([closing])}`);
  const notClosed = rejectedOutside(sets, new Set(['ERR_STORE_CLOSED']));
  assert.equal(
    notClosed.length,
    0,
    `sets failed with a code other than ERR_STORE_CLOSED:\n${describeCalls(notClosed)}`,
  );

  const rows = await readSids();
  const acknowledged = sets.filter((call) => call.state === 'fulfilled').map((call) => call.info.sid);
  const lost = acknowledged.filter((sid) => !rows.has(sid));
  assert.deepEqual(lost, [], 'acknowledged sets missing from the table');

  const later = [
    track(store.get('c0'), { op: 'get' }),
    track(store.set('c0', session(0)), { op: 'set' }),
    track(store.touch('c0', session(0)), { op: 'touch' }),
    track(store.destroy('c0'), { op: 'destroy' }),
    track(store.length(), { op: 'length' }),
    track(store.all(), { op: 'all' }),
    track(store.clear(), { op: 'clear' }),
  ];
  assert.equal((await pendingAfter(later, SETTLE_BOUND_MS)).length, 0, 'calls after close still pending');
  const notRejected = later.filter((call) => call.state !== 'rejected' || call.error.code !== 'ERR_STORE_CLOSED');
  assert.equal(
    notRejected.length,
    0,
    `calls after close did not fail with ERR_STORE_CLOSED:\n${describeCalls(notRejected)}`,
  );
  assert.equal(await within(store.close(), SETTLE_BOUND_MS), undefined, 'second close did not resolve');

  await assertNoStrayErrors(watch);
}

/**
 * Ends the store's idle connections from the database side, then checks that the operation
 * `op` fails at most once, with an outage code, and succeeds the next time.
 */
async function checkTerminatedIdle(t, server, kind, op) {
  const watch = watchProcess(t);
  const tableName = uniqueTable();
  const store = openStore(t, server.url, tableName);
  // Several calls at once leave several idle connections in the pool.
  await Promise.all(Array.from({ length: 5 }, (_, i) => store.set(`warm${i}`, session(i))));
  await Promise.all(Array.from({ length: 5 }, () => store.get('warm0')));

  const raw = await server.raw();
  try {
    const terminated = await kind.terminateOthers(raw);
    assert.ok(terminated > 0, 'the store had no connection to terminate');
    const gone = await waitFor(async () => (await kind.otherSessions(raw)).length === 0, 5000);
    assert.ok(gone, 'terminated sessions were still listed after 5 s');
  } finally {
    await raw.close();
  }

  const run = (sid) => (op === 'get' ? store.get('warm0') : store.set(sid, session(9)));
  const first = track(run('a'), { op: `first ${op}` });
  await first.done;
  const second = track(run('b'), { op: `second ${op}` });
  await second.done;
  t.diagnostic(`first ${op} after the termination: ${outcomes([first])}`);
  const firstUncoded = rejectedOutside([first], OUTAGE_CODES);
  assert.equal(firstUncoded.length, 0, `first ${op} failed without an outage code:\n${describeCalls(firstUncoded)}`);
  assert.equal(second.state, 'fulfilled', `second ${op} failed:\n${describeCalls([second])}`);
  if (op === 'get') {
    assert.deepEqual(second.value, session(0));
  } else {
    const rows = await storedSids(server, kind, tableName);
    assert.ok(rows.has('b'), 'the acknowledged set is missing from the table');
  }

  await assertNoStrayErrors(watch);
}

/**
 * Ends the store's connections while a get and a set wait on a table lock. Checks that the store
 * runs the get again, which returns the session. The store does not repeat writes, so the set
 * either fails with an outage code or is stored.
 */
async function checkTerminatedMidQuery(t, server, kind) {
  const watch = watchProcess(t);
  const tableName = uniqueTable();
  const store = openStore(t, server.url, tableName);
  await store.set('a', session(1));

  const locker = await server.raw();
  const killer = await server.raw();
  let get;
  let set;
  let terminated = 0;
  try {
    await kind.lock(locker, tableName);
    try {
      get = track(store.get('a'), { op: 'get' });
      set = track(store.set('b', session(2)), { op: 'set' });
      let blocked = [];
      await waitFor(async () => {
        blocked = await kind.blockedSessions(killer);
        return blocked.length >= 2;
      }, 5000);
      for (const id of blocked) await kind.terminate(killer, id);
      terminated = blocked.length;
      // The get's second attempt waits on the lock again, on a new connection.
      await waitFor(async () => (await kind.blockedSessions(killer)).length > 0, 2000);
    } finally {
      await kind.unlock(locker);
    }
  } finally {
    await locker.close();
    await killer.close();
  }

  assert.equal(terminated, 2, 'the get and the set were not both waiting on the lock');
  assert.equal((await pendingAfter([get, set], SETTLE_BOUND_MS)).length, 0, 'calls still pending after the release');
  t.diagnostic(`get: ${outcomes([get])}; set: ${outcomes([set])}`);
  assert.equal(get.state, 'fulfilled', `get was not run again:\n${describeCalls([get])}`);
  assert.deepEqual(get.value, session(1));
  const setUncoded = rejectedOutside([set], OUTAGE_CODES);
  assert.equal(setUncoded.length, 0, `set failed without an outage code:\n${describeCalls(setUncoded)}`);
  const rows = await storedSids(server, kind, tableName);
  if (set.state === 'fulfilled') assert.ok(rows.has('b'), 'the acknowledged set is missing from the table');
  await store.set('c', session(3));
  assert.deepEqual(await store.get('c'), session(3));

  await assertNoStrayErrors(watch);
}

/**
 * Declares the tests both private server kinds run.
 * @param {() => any} getServer  returns the server, once `before` has started it
 */
function declareServerFaults(getServer, kind) {
  it('restart fails calls, then recovers', { timeout: TEST_TIMEOUT_MS }, (t) => checkRestart(t, getServer(), kind));

  it('crash keeps acknowledged sessions', { timeout: TEST_TIMEOUT_MS }, (t) =>
    checkRestart(t, getServer(), kind, { crash: true }),
  );

  it('get survives terminated connections', { timeout: TEST_TIMEOUT_MS }, (t) =>
    checkTerminatedIdle(t, getServer(), kind, 'get'),
  );

  it('set survives terminated connections', { timeout: TEST_TIMEOUT_MS }, (t) =>
    checkTerminatedIdle(t, getServer(), kind, 'set'),
  );

  it('get mid-query termination runs again', { timeout: TEST_TIMEOUT_MS }, (t) =>
    checkTerminatedMidQuery(t, getServer(), kind),
  );

  it('store created during outage recovers', { timeout: TEST_TIMEOUT_MS }, (t) => checkStartWhileDown(t, getServer()));

  it('full pool times out, then recovers', { timeout: TEST_TIMEOUT_MS }, (t) => checkFullPool(t, getServer(), kind));

  it('callbacks settle once while down', { timeout: TEST_TIMEOUT_MS }, (t) => checkCallbacksWhileDown(t, getServer()));

  for (const warm of [true, false]) {
    const title = warm ? 'close settles sets in flight' : 'close during setup settles sets';
    it(title, { timeout: TEST_TIMEOUT_MS }, (t) => {
      const server = getServer();
      const tableName = uniqueTable();
      return checkCloseInFlight(t, {
        warm,
        url: server.url,
        tableName,
        // With no set reaching the database before close, the table may not exist.
        readSids: () => storedSids(server, kind, tableName).catch(() => new Set()),
      });
    });
  }
}

after(() => servers.cleanup());

describe('private PostgreSQL server', { skip: skipReason('postgres', 'PostgreSQL 15') }, () => {
  let server;
  before(async () => {
    server = await servers.startPostgres();
  });
  after(() => server && server.stop());

  declareServerFaults(() => server, POSTGRES);
});

describe('private MariaDB server', { skip: skipReason('mariadb', 'MariaDB') }, () => {
  let server;
  before(async () => {
    server = await servers.startMariadb();
  });
  after(() => server && server.stop());

  declareServerFaults(() => server, MARIADB);

  it('frozen server times out new calls', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    // A connection in recent use is not pinged before use, so a call may reach the frozen
    // server and wait for the query timeout rather than the acquire timeout.
    const store = openStore(t, server.url, uniqueTable(), {
      pool: { acquireTimeoutMillis: 2000 },
      queryTimeoutMillis: 2000,
    });
    await store.set('a', session(1));

    await server.freeze();
    t.after(() => server.thaw());
    const calls = [
      track(store.get('a'), { op: 'get' }),
      track(store.set('b', session(2)), { op: 'set' }),
      track(store.length(), { op: 'length' }),
    ];
    // Twice the timeouts: the bound by which calls to the frozen server must have failed.
    const pending = await pendingAfter(calls, 4000);
    server.thaw();
    t.diagnostic(`calls to the frozen server: ${outcomes(calls)}`);
    assert.equal(pending.length, 0, `calls still pending against the frozen server:\n${describeCalls(pending)}`);
    const notTimedOut = rejectedOutside(calls, new Set(['ERR_POOL_TIMEOUT', 'ERR_QUERY_TIMEOUT']));
    assert.equal(notTimedOut.length, 0, `calls failed with another code:\n${describeCalls(notTimedOut)}`);
    const succeeded = calls.filter((call) => call.state === 'fulfilled');
    assert.equal(succeeded.length, 0, `calls succeeded against the frozen server:\n${describeCalls(succeeded)}`);

    const thawed = track(store.get('a'), { op: 'get after thaw' });
    await thawed.done;
    assert.equal(thawed.state, 'fulfilled', `get after the thaw failed:\n${describeCalls([thawed])}`);
    assert.deepEqual(thawed.value, session(1));

    await assertNoStrayErrors(watch);
  });

  it('frozen mid-query calls settle', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    // queryTimeoutMillis bounds a call whose query gets no reply.
    const store = openStore(t, server.url, uniqueTable(), {
      pool: { acquireTimeoutMillis: 2000 },
      queryTimeoutMillis: 3000,
    });
    await store.set('a', session(1));

    // Ten callers, one per pooled connection, each make one call after the other with a 1 MB
    // session, so that at any moment most connections are busy with a query the freeze can catch.
    const big = { ...session(2), padding: 'x'.repeat(1_000_000) };
    await store.set('big', big);
    const calls = [];
    let running = true;
    t.after(() => {
      running = false;
    });
    const caller = async (id) => {
      for (let round = 0; running; round += 1) {
        const call =
          round % 2 === 0 ? track(store.get('big'), { op: 'get' }) : track(store.set(`b${id}`, big), { op: 'set' });
        calls.push(call);
        await call.done;
      }
    };
    for (let id = 0; id < 10; id += 1) caller(id);
    await sleep(300);
    await server.freeze();
    t.after(() => server.thaw());
    running = false;
    const inFlight = calls.filter((call) => call.state === 'pending');
    t.diagnostic(`calls in flight when the server froze: ${inFlight.length} of ${calls.length}`);

    const pendingWhileFrozen = await pendingAfter(calls, SETTLE_BOUND_MS);
    // Described now, because the thaw settles them.
    const frozenReport = describeCalls(pendingWhileFrozen);
    t.diagnostic(`calls after ${SETTLE_BOUND_MS} ms of freeze: ${outcomes(calls)}`);
    server.thaw();

    assert.equal((await pendingAfter(calls, SETTLE_BOUND_MS)).length, 0, 'calls still pending after the thaw');
    const thawed = track(store.get('a'), { op: 'get after thaw' });
    await thawed.done;
    assert.equal(thawed.state, 'fulfilled', `get after the thaw failed:\n${describeCalls([thawed])}`);
    const uncoded = rejectedOutside(calls, OUTAGE_CODES);
    assert.equal(uncoded.length, 0, `calls failed without an outage code:\n${describeCalls(uncoded)}`);
    assert.equal(
      pendingWhileFrozen.length,
      0,
      `calls still pending after ${SETTLE_BOUND_MS} ms against the frozen server:\n${frozenReport}`,
    );

    await assertNoStrayErrors(watch);
  });

  it('connections past wait_timeout reconnect', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    const onFreshConnection = async (sql) => {
      const raw = await server.raw();
      try {
        return await raw.query(sql);
      } finally {
        await raw.close();
      }
    };
    const abortedClients = async () =>
      Number((await onFreshConnection("SHOW GLOBAL STATUS LIKE 'Aborted_clients'"))[0].Value);
    await onFreshConnection('SET GLOBAL wait_timeout = 2');
    t.after(() => onFreshConnection('SET GLOBAL wait_timeout = DEFAULT'));

    // One store reads and the other writes after the idle time, so each meets a dropped connection.
    const reader = openStore(t, server.url, uniqueTable());
    const writerTable = uniqueTable();
    const writer = openStore(t, server.url, writerTable);
    await reader.set('a', session(1));
    await writer.set('a', session(1));
    const abortedBefore = await abortedClients();
    await sleep(4000);
    assert.ok((await abortedClients()) > abortedBefore, 'the server did not drop the idle connections');

    const get = track(reader.get('a'), { op: 'get after idle' });
    const set = track(writer.set('b', session(2)), { op: 'set after idle' });
    assert.equal((await pendingAfter([get, set], SETTLE_BOUND_MS)).length, 0, 'calls after idle still pending');
    assert.equal(get.state, 'fulfilled', `get after idle failed:\n${describeCalls([get])}`);
    assert.deepEqual(get.value, session(1));
    assert.equal(set.state, 'fulfilled', `set after idle failed:\n${describeCalls([set])}`);
    assert.ok((await storedSids(server, MARIADB, writerTable)).has('b'), 'the set after idle is missing');

    await assertNoStrayErrors(watch);
  });
});

describe('SQLite file shared by processes', () => {
  it('sets wait out another process lock', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    const file = path.join(servers.tmpDir('sqlite'), 'sessions.sqlite');
    const tableName = uniqueTable();
    const store = openStore(t, `sqlite://${file}`, tableName);
    // Creates the file, switches it to WAL mode and creates the table before the other process locks it.
    await store.set('warm', session(0));

    const holder = runFixture('fault-sqlite-lock.js', [file, '2000']);
    await holder.line('locked');
    const sets = [];
    for (let i = 0; i < 20; i += 1) sets.push(track(store.set(`l${i}`, session(i)), { op: 'set', sid: `l${i}` }));
    const { releasingAt } = await holder.line('releasingAt');
    const exit = await holder.exited;
    assert.equal(exit.code, 0, `the lock holder failed: ${exit.stderr}`);

    const pending = await pendingAfter(sets, SETTLE_BOUND_MS);
    assert.equal(pending.length, 0, `sets still pending after the release:\n${describeCalls(pending)}`);
    const locked = sets.filter((call) => call.state === 'rejected' && /database is locked/.test(call.error.message));
    assert.equal(locked.length, 0, `sets failed with "database is locked":\n${describeCalls(locked)}`);
    const failed = sets.filter((call) => call.state !== 'fulfilled');
    assert.equal(failed.length, 0, `sets failed:\n${describeCalls(failed)}`);
    const early = sets.filter((call) => call.settledAt < releasingAt);
    assert.equal(early.length, 0, 'sets finished while the other process held the lock, so the lock was not held');

    await store.close();
    const rows = storedSqliteSids(file, tableName);
    assert.equal(rows.size, 21, 'rows in the table: the first session and the 20 sets');

    await assertNoStrayErrors(watch);
  });

  it('sets behind a long lock fail together', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    const file = path.join(servers.tmpDir('sqlite'), 'sessions.sqlite');
    const tableName = uniqueTable();
    // A query timeout longer than the test, so each set settles by the lock alone.
    const store = openStore(t, `sqlite://${file}`, tableName, { queryTimeoutMillis: 120000 });
    await store.set('warm', session(0));

    // The first set waits out SQLite's 5 s busy timeout alone and the nine queued behind it
    // wait once more, as one batch: about 10 s in all, while the lock is held for 16 s.
    const holder = runFixture('fault-sqlite-lock.js', [file, '16000']);
    await holder.line('locked');
    const sets = [];
    for (let i = 0; i < 10; i += 1) sets.push(track(store.set(`l${i}`, session(i)), { op: 'set', sid: `l${i}` }));
    const { releasingAt } = await holder.line('releasingAt');
    const exit = await holder.exited;
    assert.equal(exit.code, 0, `the lock holder failed: ${exit.stderr}`);

    const pending = await pendingAfter(sets, SETTLE_BOUND_MS);
    assert.equal(pending.length, 0, `sets still pending after the release:\n${describeCalls(pending)}`);
    const late = sets.filter((call) => call.settledAt >= releasingAt);
    assert.equal(late.length, 0, `sets that waited for the lock once per write:\n${describeCalls(late)}`);
    const locked = sets.filter(
      (call) => call.state === 'rejected' && call.error.code === 'ERR_DATABASE' && /locked/.test(call.error.message),
    );
    assert.equal(locked.length, sets.length, `sets that did not fail on the lock:\n${describeCalls(sets)}`);

    await store.close();
    assert.deepEqual([...storedSqliteSids(file, tableName)], ['warm'], 'a failed set was committed');

    await assertNoStrayErrors(watch);
  });

  it('set timed out in queue never commits', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    const file = path.join(servers.tmpDir('sqlite'), 'sessions.sqlite');
    const tableName = uniqueTable();
    const store = openStore(t, `sqlite://${file}`, tableName, { queryTimeoutMillis: 1000 });
    await store.set('warm', session(0));

    // The other process holds the lock for 8 s. The first set times out at 1 s, and the second
    // (made at 0.3 s) then starts behind it and waits on for the lock after its own timeout.
    // The third, made at 1.2 s, times out while it still waits in the queue behind the second.
    const holder = runFixture('fault-sqlite-lock.js', [file, '8000']);
    await holder.line('locked');
    const first = track(store.set('first', session(1)), { op: 'set', sid: 'first' });
    await sleep(300);
    const second = track(store.set('second', session(2)), { op: 'set', sid: 'second' });
    await sleep(900);
    const queued = track(store.set('queued', session(3)), { op: 'set', sid: 'queued' });
    const exit = await holder.exited;
    assert.equal(exit.code, 0, `the lock holder failed: ${exit.stderr}`);

    const calls = [first, second, queued];
    const pending = await pendingAfter(calls, SETTLE_BOUND_MS);
    assert.equal(pending.length, 0, `sets still pending after the release:\n${describeCalls(pending)}`);
    assert.equal(queued.state, 'rejected', `the queued set did not fail:\n${describeCalls([queued])}`);
    assert.equal(queued.error.code, 'ERR_QUERY_TIMEOUT');
    // close() waits for every write still queued, so the file is final after it.
    await store.close();
    assert.ok(!storedSqliteSids(file, tableName).has('queued'), 'the set that timed out in the queue was committed');

    await assertNoStrayErrors(watch);
  });

  it('two processes write one file', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const watch = watchProcess(t);
    const file = path.join(servers.tmpDir('sqlite'), 'sessions.sqlite');
    const tableName = uniqueTable();
    // A shared start time, late enough for both processes to load the addon and open their stores.
    const startAt = Date.now() + 2000;
    const writers = ['a', 'b'].map((prefix) =>
      runFixture('fault-sqlite-writer.js', [file, tableName, prefix, '300', String(startAt)]),
    );
    const exits = await Promise.all(writers.map((writer) => writer.exited));

    for (const exit of exits) assert.equal(exit.code, 0, `a writer process failed: ${exit.stderr}`);
    const reports = exits.map((exit) => exit.lines.at(-1) || { errors: [], startedAt: NaN, endedAt: NaN });
    const windows = reports.map((report) => `${report.startedAt - startAt}-${report.endedAt - startAt}`);
    t.diagnostic(`write windows in ms after the start time: ${windows.join(', ')}`);
    const [first, second] = reports;
    const overlap = first.startedAt < second.endedAt && second.startedAt < first.endedAt;
    assert.ok(overlap, 'the two processes did not write at the same time');
    const errors = reports.flatMap((report) => report.errors);
    assert.deepEqual(errors.slice(0, 5), [], `${errors.length} sets failed`);
    const rows = storedSqliteSids(file, tableName);
    assert.equal(rows.size, 600, 'rows in the table after both processes wrote');

    await assertNoStrayErrors(watch);
  });

  for (const warm of [true, false]) {
    const title = warm ? 'close settles sets in flight' : 'close during setup settles sets';
    it(title, { timeout: TEST_TIMEOUT_MS }, (t) => {
      const file = path.join(servers.tmpDir('sqlite'), 'sessions.sqlite');
      const tableName = uniqueTable();
      return checkCloseInFlight(t, {
        warm,
        url: `sqlite://${file}`,
        tableName,
        readSids: () => {
          try {
            return storedSqliteSids(file, tableName);
          } catch {
            // No set reached the file before close, so the table may not exist.
            return new Set();
          }
        },
      });
    });
  }
});
