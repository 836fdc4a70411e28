'use strict';

const { codedError } = require('./errors');

/** 1000-01-01 and 9999-12-31T23:59:59.999Z: the range of MySQL's DATETIME, which every dialect holds. */
const EARLIEST = Date.UTC(1000, 0, 1);
const LATEST = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/**
 * Returns `time`, or throws naming `source` when no database column could hold it.
 * @param {number} time
 * @param {string} source
 */
function inRange(time, source) {
  if (time >= EARLIEST && time <= LATEST) return time;
  throw codedError(
    'ERR_INVALID_ARGUMENT',
    `${source} gives an expiry outside the years 1000 to 9999 (${new Date(time).getUTCFullYear() || 'not a date'}): use a nearer date or a smaller number of milliseconds`,
    RangeError,
  );
}

/**
 * Returns when a session expires, in epoch milliseconds: `cookie.expires` when set, else now
 * plus `cookie.maxAge`, else now plus `ttl`. `set` and `touch` both use this rule.
 *
 * `cookie.expires` may be a Date or a date string (what a session read back from the store
 * carries). An expires or maxAge that is present but not a valid time is an error, because
 * storing the session with a made-up expiry would hide the bug.
 * @param {any} session
 * @param {number} ttl
 * @param {number} now
 * @returns {number}
 */
function expiryOf(session, ttl, now) {
  const cookie = session.cookie;
  if (cookie === undefined || cookie === null) return inRange(now + ttl, 'ttl');
  if (typeof cookie !== 'object') {
    throw codedError('ERR_INVALID_ARGUMENT', `session.cookie must be an object, got ${typeof cookie}`, TypeError);
  }

  const expires = cookie.expires;
  if (expires !== undefined && expires !== null && expires !== false) {
    const time = expires instanceof Date ? expires.getTime() : Date.parse(expires);
    if (Number.isNaN(time) || (typeof expires !== 'string' && !(expires instanceof Date))) {
      throw codedError(
        'ERR_INVALID_ARGUMENT',
        `session.cookie.expires is not a valid date (${String(expires).slice(0, 40)}): use a Date, an ISO string or null`,
        TypeError,
      );
    }
    return inRange(time, 'session.cookie.expires');
  }

  const maxAge = cookie.maxAge;
  if (maxAge !== undefined && maxAge !== null) {
    if (typeof maxAge !== 'number' || !Number.isFinite(maxAge)) {
      throw codedError(
        'ERR_INVALID_ARGUMENT',
        `session.cookie.maxAge must be a number of milliseconds or null, got ${String(maxAge).slice(0, 40)}`,
        TypeError,
      );
    }
    return inRange(now + maxAge, 'session.cookie.maxAge');
  }
  return inRange(now + ttl, 'ttl');
}

module.exports = { expiryOf };
