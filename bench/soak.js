'use strict';

// Memory soak: a million mixed get/set/touch/destroy calls against this store on a SQLite file,
// sampling the process RSS as it goes. The RSS should stay flat once the pools and caches have
// filled, so the run fails when it grows by more than BENCH_SOAK_MAX_GROWTH_MB from the sample
// at 10% of the calls to the last one. Every get is checked against what the same worker last
// set or destroyed. Run with `npm run bench:soak` (node --expose-gc, so that each sample is
// taken after a full garbage collection and measures retained memory rather than garbage).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { isDeepStrictEqual } = require('node:util');

const { Cookie } = require('express-session');

const { KnexSessionStore } = require('..');
const { CheckError, DAY_MS, call, makeSession, newSid } = require('./workload');

function readNumber(name, fallback, least) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < least) {
    throw new Error(`${name} must be an integer of at least ${least}, got ${JSON.stringify(text)}`);
  }
  return value;
}

const CALLS = readNumber('BENCH_SOAK_CALLS', 1_000_000, 100);
const SAMPLES = 50;
const SAMPLE_EVERY = readNumber('BENCH_SOAK_SAMPLE_EVERY', Math.max(1, Math.floor(CALLS / SAMPLES)), 1);
const IN_FLIGHT = readNumber('BENCH_SOAK_IN_FLIGHT', 16, 1);
const SIDS_PER_WORKER = 64;
// NOTE: 32 MiB is a judgment, not a measured bound: a leak of a few hundred bytes per call
// exceeds it within a million calls, while allocator noise on a flat run stays well below.
const MAX_GROWTH_MB = readNumber('BENCH_SOAK_MAX_GROWTH_MB', 32, 0);

/** A small seeded generator (mulberry32), so that a run's sequence of calls can be repeated. */
function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const MiB = 2 ** 20;

function sampleMemory(calls) {
  if (typeof global.gc === 'function') global.gc();
  const usage = process.memoryUsage();
  return {
    calls,
    rssMiB: usage.rss / MiB,
    heapUsedMiB: usage.heapUsed / MiB,
    externalMiB: usage.external / MiB,
  };
}

function printSample(sample) {
  const calls = String(sample.calls).padStart(String(CALLS).length);
  process.stdout.write(
    `soak: ${calls} calls  rss ${sample.rssMiB.toFixed(1).padStart(7)} MiB  ` +
      `heap ${sample.heapUsedMiB.toFixed(1).padStart(6)} MiB  external ${sample.externalMiB.toFixed(1).padStart(6)} MiB\n`,
  );
}

/**
 * Runs one worker's share of the calls. The worker owns SIDS_PER_WORKER sessions, so no two
 * calls in flight touch the same sid and the expected content of each sid is known.
 */
async function worker(store, random, shared) {
  const slots = Array.from({ length: SIDS_PER_WORKER }, () => ({ sid: newSid(), expected: null }));
  while (shared.started < CALLS) {
    shared.started += 1;
    const slot = slots[Math.floor(random() * slots.length)];
    const pick = random();
    if (pick < 0.4) {
      const value = await call(store, 'get', slot.sid);
      if (!isDeepStrictEqual(value, slot.expected)) {
        throw new CheckError(
          `get(${slot.sid}) returned ${JSON.stringify(value)}, expected ${JSON.stringify(slot.expected)}`,
        );
      }
    } else if (pick < 0.7) {
      const sessionData = makeSession(shared.started, shared.started);
      await call(store, 'set', slot.sid, sessionData);
      slot.expected = JSON.parse(JSON.stringify(sessionData));
      slot.session = sessionData;
    } else if (pick < 0.9) {
      // touch moves the expiry only, so the stored data and slot.expected stay as they are.
      const base = slot.session || makeSession(0, 0);
      await call(store, 'touch', slot.sid, { ...base, cookie: new Cookie({ maxAge: DAY_MS }) });
    } else {
      await call(store, 'destroy', slot.sid);
      // A destroyed sid is not used again, so later sets insert new rows as logins do.
      slot.sid = newSid();
      slot.expected = null;
      slot.session = undefined;
    }
    shared.done += 1;
    if (shared.done % SAMPLE_EVERY === 0) {
      const sample = sampleMemory(shared.done);
      shared.samples.push(sample);
      printSample(sample);
    }
  }
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-soak-'));
  const store = new KnexSessionStore({ knex: `sqlite://${path.join(dir, 'connect-session-knex.sqlite')}` });
  const shared = { started: 0, done: 0, samples: [] };
  const started = Date.now();
  let failure;
  try {
    await store.ready;
    process.stdout.write(
      `soak: ${CALLS} calls (40% get, 30% set, 20% touch, 10% destroy), ${IN_FLIGHT} in flight, ` +
        `RSS sampled every ${SAMPLE_EVERY} calls${typeof global.gc === 'function' ? ' after gc()' : ' (run with --expose-gc for steadier samples)'}\n`,
    );
    const first = sampleMemory(0);
    shared.samples.push(first);
    printSample(first);
    const seed = readNumber('BENCH_SOAK_SEED', 1, 0);
    await Promise.all(Array.from({ length: IN_FLIGHT }, (_, i) => worker(store, seededRandom(seed + i), shared)));
  } catch (error) {
    failure = error;
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (failure) {
    const kind = failure instanceof CheckError ? 'check failed' : 'store call failed';
    process.stderr.write(`soak: FAILED after ${shared.done} calls, ${kind}: ${failure.message}\n`);
    process.exitCode = 1;
    return;
  }

  const seconds = (Date.now() - started) / 1000;
  const baseline = shared.samples.find((sample) => sample.calls >= CALLS * 0.1) || shared.samples[0];
  const last = shared.samples[shared.samples.length - 1];
  const growth = last.rssMiB - baseline.rssMiB;
  process.stdout.write(
    `soak: ${shared.done} calls in ${seconds.toFixed(1)} s (${Math.round(shared.done / seconds)} calls/s); ` +
      `RSS ${baseline.rssMiB.toFixed(1)} MiB at ${baseline.calls} calls -> ${last.rssMiB.toFixed(1)} MiB at ` +
      `${last.calls} calls: growth ${growth >= 0 ? '+' : ''}${growth.toFixed(1)} MiB ` +
      `(${((growth / baseline.rssMiB) * 100).toFixed(1)}%), limit ${MAX_GROWTH_MB} MiB\n`,
  );
  if (growth > MAX_GROWTH_MB) {
    process.stderr.write(
      `soak: FAILED: RSS grew by ${growth.toFixed(1)} MiB from 10% of the calls to the end, more than ` +
        `BENCH_SOAK_MAX_GROWTH_MB=${MAX_GROWTH_MB}\n`,
    );
    process.exitCode = 1;
  }
}

main().catch((error) => {
  process.stderr.write(`soak: ${error.stack || error}\n`);
  process.exitCode = 1;
});
