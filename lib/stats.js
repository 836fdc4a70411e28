'use strict';
// @ts-check

// Counts and latencies of the store's calls, for store.stats(). Recording a call costs a few
// increments and one array write: latencies go into a fixed log-scale histogram of whole
// microseconds with 8 buckets per power of two, so a quantile is off by at most 12.5%.

/** The operations counted, in the order of their index. */
const OPERATIONS = /** @type {const} */ (['get', 'set', 'touch', 'destroy', 'all', 'length', 'clear']);

/** Index of each operation in OPERATIONS, for `record`. */
const OP = { get: 0, set: 1, touch: 2, destroy: 3, all: 4, length: 5, clear: 6 };

const SUB_BITS = 3;
const SUB = 1 << SUB_BITS;
/** Buckets for 0 to 2^31 - 1 microseconds (about 36 minutes). Longer calls land in the last. */
const BUCKETS = SUB + (31 - SUB_BITS) * SUB;
const MAX_US = 2 ** 31 - 1;

/**
 * Returns the bucket of a duration in whole microseconds.
 * @param {number} us  an integer from 0 to 2^31 - 1
 */
function bucketOf(us) {
  if (us < SUB) return us;
  const exponent = 31 - Math.clz32(us);
  return SUB + (exponent - SUB_BITS) * SUB + ((us >>> (exponent - SUB_BITS)) & (SUB - 1));
}

/**
 * Returns the largest duration, in microseconds, that falls into bucket `index`.
 * @param {number} index
 */
function bucketTop(index) {
  if (index < SUB) return index;
  const shift = Math.floor((index - SUB) / SUB);
  const sub = (index - SUB) % SUB;
  return (SUB + sub + 1) * 2 ** shift - 1;
}

class OperationStats {
  constructor() {
    this.ok = 0;
    this.errors = 0;
    /** Sum of the latencies, in ms. */
    this.totalMs = 0;
    this.maxMs = 0;
    this.buckets = new Uint32Array(BUCKETS);
    /** @type {Record<string, number> | null} errors by code, made at the first error */
    this.codes = null;
  }
}

class StoreStats {
  constructor() {
    this.operations = OPERATIONS.map(() => new OperationStats());
    this.cleanupRuns = 0;
    this.cleanupErrors = 0;
    this.rowsRemoved = 0;
    /** @type {number | null} */
    this.lastCleanupAt = null;
    this.createdAt = Date.now();
  }

  /**
   * Records one call of operation `op` that took `ms` and failed with `error`, if given.
   * @param {number} op  an index from OP
   * @param {number} ms
   * @param {unknown} [error]
   */
  record(op, ms, error) {
    const stats = this.operations[op];
    if (error === undefined) {
      stats.ok += 1;
    } else {
      stats.errors += 1;
      const code = (error && /** @type {any} */ (error).code) || 'uncoded';
      const codes = stats.codes || (stats.codes = {});
      codes[code] = (codes[code] || 0) + 1;
    }
    stats.totalMs += ms;
    if (ms > stats.maxMs) stats.maxMs = ms;
    const us = ms >= MAX_US / 1000 ? MAX_US : Math.round(ms * 1000);
    stats.buckets[bucketOf(us)] += 1;
  }

  /**
   * Records one run of the background cleanup.
   * @param {number} rows  rows deleted, or 0 when it failed
   * @param {boolean} failed
   */
  recordCleanup(rows, failed) {
    this.cleanupRuns += 1;
    if (failed) this.cleanupErrors += 1;
    this.rowsRemoved += rows;
    this.lastCleanupAt = Date.now();
  }

  /**
   * Returns a plain-object copy of the counts, for store.stats().
   * @param {{ size: number, idle: number }} pool
   */
  snapshot(pool) {
    /** @type {Record<string, ReturnType<typeof summarize>>} */
    const operations = {};
    for (let i = 0; i < OPERATIONS.length; i += 1) operations[OPERATIONS[i]] = summarize(this.operations[i]);
    return {
      since: new Date(this.createdAt).toISOString(),
      operations,
      cleanup: {
        runs: this.cleanupRuns,
        errors: this.cleanupErrors,
        rowsRemoved: this.rowsRemoved,
        lastRunAt: this.lastCleanupAt === null ? null : new Date(this.lastCleanupAt).toISOString(),
      },
      pool: { size: pool.size, idle: pool.idle },
    };
  }
}

/** Rounds to whole microseconds, as ms. */
function round(/** @type {number} */ ms) {
  return Math.round(ms * 1000) / 1000;
}

/** @param {OperationStats} stats */
function summarize(stats) {
  const count = stats.ok + stats.errors;
  const quantiles = [0.5, 0.9, 0.99];
  const values = [0, 0, 0];
  if (count > 0) {
    let seen = 0;
    let next = 0;
    for (let i = 0; i < BUCKETS && next < quantiles.length; i += 1) {
      seen += stats.buckets[i];
      while (next < quantiles.length && seen >= Math.ceil(quantiles[next] * count)) {
        // The top of the bucket, but never more than the slowest call seen.
        values[next] = Math.min(bucketTop(i) / 1000, stats.maxMs);
        next += 1;
      }
    }
  }
  return {
    ok: stats.ok,
    errors: stats.errors,
    errorCodes: { ...stats.codes },
    latencyMs: {
      mean: count > 0 ? round(stats.totalMs / count) : 0,
      p50: round(values[0]),
      p90: round(values[1]),
      p99: round(values[2]),
      max: round(stats.maxMs),
    },
  };
}

module.exports = { StoreStats, OP, OPERATIONS, bucketOf, bucketTop, BUCKETS };
