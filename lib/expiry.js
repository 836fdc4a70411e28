'use strict';

const { codedError } = require('./errors');

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
  if (cookie === undefined || cookie === null) return now + ttl;
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
    return time;
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
    return now + maxAge;
  }
  return now + ttl;
}

module.exports = { expiryOf };
