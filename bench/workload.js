'use strict';

// The store-level workload: session data, the timed phases and the correctness checks.
const crypto = require('node:crypto');
const { isDeepStrictEqual } = require('node:util');
const { performance } = require('node:perf_hooks');

const { Cookie } = require('express-session');

const DAY_MS = 24 * 60 * 60 * 1000;

/** The phases in the order they run, each over every session of the batch. */
const PHASES = ['set', 'get', 'touch', 'set-changed', 'destroy'];

/** Returns a new random sid of the form express-session generates (uid-safe, 24 bytes). */
function newSid() {
  return crypto.randomBytes(24).toString('base64url');
}

/**
 * Builds a session as express-session hands it to a store: a Cookie with maxAge (so it has
 * an expires date) and some user data, about 300 bytes as JSON.
 */
function makeSession(index, views) {
  return {
    cookie: new Cookie({ maxAge: DAY_MS, httpOnly: true, path: '/', sameSite: 'lax' }),
    user: {
      id: 100000 + index,
      name: `User Number ${index}`,
      email: `user${index}@example.com`,
      roles: ['reader', 'editor'],
    },
    csrfSecret: crypto.randomBytes(18).toString('base64url'),
    views,
    lastSeen: new Date().toISOString(),
  };
}

/**
 * Builds one batch of sessions for one store and one in-flight setting: the sids and, per
 * phase, the argument each call gets.
 */
function makeBatch(count) {
  const sids = new Array(count);
  const created = new Array(count);
  const touched = new Array(count);
  const changed = new Array(count);
  for (let i = 0; i < count; i++) {
    sids[i] = newSid();
    created[i] = makeSession(i, 1);
    // A touch carries the session with a renewed cookie, as express-session sends it.
    touched[i] = { ...created[i], cookie: new Cookie({ maxAge: DAY_MS, httpOnly: true, path: '/', sameSite: 'lax' }) };
    changed[i] = { ...created[i], views: 2, lastSeen: new Date(Date.now() + 1000).toISOString() };
  }
  return { sids, created, touched, changed };
}

/** Returns the mean length of JSON.stringify over the sessions, in bytes. */
function meanSessionBytes(sessions) {
  let total = 0;
  for (const value of sessions) total += Buffer.byteLength(JSON.stringify(value));
  return total / sessions.length;
}

/**
 * Calls a store method in callback form, the way express-session calls it, as a promise.
 * The promise rejects with the error passed to the callback.
 */
function call(store, method, ...args) {
  return new Promise((resolve, reject) => {
    store[method](...args, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

/** Returns the value at quantile q (0..1) of sorted latencies, nearest-rank. */
function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

function summarize(latencies, seconds) {
  const sorted = Float64Array.from(latencies).sort();
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    ops: latencies.length,
    seconds,
    opsPerSec: latencies.length / seconds,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
    meanMs: sum / sorted.length,
    maxMs: sorted[sorted.length - 1],
  };
}

/** The first failed call of a phase: `index` is the call's position, `cause` its error. */
class CallError extends Error {
  constructor(index, cause) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.index = index;
  }
}

/**
 * Runs `operation(i)` for i in [0, count) with `inFlight` calls outstanding at a time, or all
 * at once when `inFlight` is 'burst', and returns throughput and latency. Latency is measured
 * per call from its start to its callback, in milliseconds. The first error is thrown as a
 * CallError after every call has settled, so nothing is left running against a store about
 * to be closed.
 * @param {number} count
 * @param {number | 'burst'} inFlight
 * @param {(i: number) => Promise<unknown>} operation
 */
async function timePhase(count, inFlight, operation) {
  const latencies = new Float64Array(count);
  let firstError;
  const timed = async (i) => {
    const started = performance.now();
    try {
      await operation(i);
    } catch (error) {
      if (firstError === undefined) firstError = new CallError(i, error);
    }
    latencies[i] = performance.now() - started;
  };

  const started = performance.now();
  if (inFlight === 'burst') {
    const calls = new Array(count);
    for (let i = 0; i < count; i++) calls[i] = timed(i);
    await Promise.all(calls);
  } else {
    let next = 0;
    const worker = async () => {
      while (next < count) await timed(next++);
    };
    await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
  }
  const seconds = (performance.now() - started) / 1000;
  if (firstError !== undefined) throw firstError;
  return summarize(latencies, seconds);
}

/** Raised when a store returns something other than what the check expects. */
class CheckError extends Error {}

function describeValue(value) {
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 400 ? `${text.slice(0, 400)}...` : text;
}

/**
 * Checks that `results[i]` deep-equals the JSON round trip of `sessions[i]` (what a store
 * that keeps JSON returns), or is null when `sessions` is null.
 */
function checkResults(label, sids, results, sessions) {
  for (let i = 0; i < sids.length; i++) {
    const expected = sessions === null ? null : JSON.parse(JSON.stringify(sessions[i]));
    const actual = results[i] === undefined ? null : results[i];
    if (!isDeepStrictEqual(actual, expected)) {
      throw new CheckError(
        `${label}: get(${sids[i]}) returned ${describeValue(actual)}, expected ${describeValue(expected)}`,
      );
    }
  }
}

/** Runs `operation` over the sids, 16 calls in flight and untimed, naming a failed call. */
async function untimed(label, sids, operation) {
  try {
    await timePhase(sids.length, 16, operation);
  } catch (error) {
    if (!(error instanceof CallError)) throw error;
    throw new Error(`${label}(${sids[error.index]}) failed: ${error.message}`, { cause: error.cause });
  }
}

/** Reads every sid back and checks the results. */
async function verify(store, label, batch, sessions) {
  const results = new Array(batch.sids.length);
  await untimed(`${label}: get`, batch.sids, async (i) => {
    results[i] = await call(store, 'get', batch.sids[i]);
  });
  checkResults(label, batch.sids, results, sessions);
}

/**
 * Runs the five phases over a fresh batch at one in-flight setting, with the checks between
 * them, and returns { phase: stats }.
 * @param {any} store
 * @param {string} label  store and setting, for messages
 * @param {number} count
 * @param {number | 'burst'} inFlight
 * @param {(message: string) => void} log
 */
async function runPhases(store, label, count, inFlight, log) {
  const batch = makeBatch(count);
  const stats = {};
  const results = new Array(count);
  const { sids } = batch;

  const steps = {
    set: (i) => call(store, 'set', sids[i], batch.created[i]),
    get: async (i) => {
      results[i] = await call(store, 'get', sids[i]);
    },
    touch: (i) => call(store, 'touch', sids[i], batch.touched[i]),
    'set-changed': (i) => call(store, 'set', sids[i], batch.changed[i]),
    destroy: (i) => call(store, 'destroy', sids[i]),
  };

  for (const phase of PHASES) {
    try {
      stats[phase] = await timePhase(count, inFlight, steps[phase]);
    } catch (error) {
      if (!(error instanceof CallError)) throw error;
      throw new Error(`${label} ${phase}(${sids[error.index]}) failed: ${error.message}`, { cause: error.cause });
    }
    log(`${label} ${phase}: ${Math.round(stats[phase].opsPerSec)} ops/s`);

    if (phase === 'get') checkResults(`${label} after set`, sids, results, batch.created);
    if (phase === 'set-changed') await verify(store, `${label} after set-changed`, batch, batch.changed);
    if (phase === 'destroy') await verify(store, `${label} after destroy`, batch, null);
  }
  return stats;
}

/** Runs a few hundred untimed calls so that pools are filled and code is compiled before timing. */
async function warmUp(store, label, count) {
  const { sids, created, touched } = makeBatch(count);
  await untimed(`${label} warm-up set`, sids, (i) => call(store, 'set', sids[i], created[i]));
  await untimed(`${label} warm-up get`, sids, (i) => call(store, 'get', sids[i]));
  await untimed(`${label} warm-up touch`, sids, (i) => call(store, 'touch', sids[i], touched[i]));
  await untimed(`${label} warm-up destroy`, sids, (i) => call(store, 'destroy', sids[i]));
}

module.exports = {
  CheckError,
  DAY_MS,
  PHASES,
  call,
  makeSession,
  makeBatch,
  meanSessionBytes,
  newSid,
  runPhases,
  timePhase,
  untimed,
  warmUp,
};
