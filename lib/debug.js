'use strict';
// @ts-check

// Debug output under DEBUG=connect-session-knex, through the `debug` package as express-session
// does. Callers test `log.enabled` before building a message, so a disabled log costs one
// property read per call. Messages never hold a whole sid or a password.
const createDebug = require('debug');

const log = createDebug('connect-session-knex');

/**
 * Returns the first 6 characters of a sid and an ellipsis: enough to follow one session
 * through the log, too few to use as a credential (as the native side's short_sid).
 * @param {unknown} sid
 */
function shortSid(sid) {
  if (typeof sid !== 'string') return `(${sid === null ? 'null' : typeof sid})`;
  if (sid === '') return '(empty)';
  const head = [...sid.slice(0, 12)].slice(0, 6).join('');
  return head.length < sid.length ? `${head}…` : head;
}

const DIALECT_NAMES = { sqlite: 'SQLite', postgres: 'PostgreSQL', mysql: 'MySQL/MariaDB' };

/**
 * Returns a URL with its password, in the user part or the query, replaced by `***`.
 * @param {string} url
 */
function redactUrl(url) {
  try {
    const parsed = new URL(url);
    const inQuery = parsed.searchParams.has('password');
    if (!parsed.password && !inQuery) return url;
    if (parsed.password) parsed.password = '***';
    if (inQuery) parsed.searchParams.set('password', '***');
    return parsed.toString();
  } catch {
    const start = url.indexOf('://');
    const at = url.lastIndexOf('@');
    return start >= 0 && at > start ? `${url.slice(0, start)}://***@${url.slice(at + 1)}` : url;
  }
}

/**
 * Describes where the sessions live, without the password.
 * @param {Record<string, any>} fields  the connection fields from lib/options.js
 */
function describeTarget(fields) {
  if (fields.url !== undefined) {
    const scheme = String(fields.url).split(':', 1)[0];
    const dialect =
      scheme === 'sqlite' || scheme === 'file'
        ? 'sqlite'
        : scheme === 'mysql' || scheme === 'mariadb'
          ? 'mysql'
          : scheme.startsWith('postgres')
            ? 'postgres'
            : fields.client;
    const name = DIALECT_NAMES[/** @type {keyof DIALECT_NAMES} */ (dialect)] || 'database';
    return `${name} ${redactUrl(String(fields.url))}`;
  }
  const name = DIALECT_NAMES[/** @type {keyof DIALECT_NAMES} */ (fields.client)] || String(fields.client);
  if (fields.client === 'sqlite') return `${name} file ${fields.filename}`;
  const where = fields.socketPath
    ? `socket ${fields.socketPath}`
    : `${fields.host || 'localhost'}:${fields.port || ''}`;
  const parts = [`${name} ${where}/${fields.database || ''}`];
  if (fields.user) parts.push(`user ${fields.user}`);
  if (fields.sslMode) parts.push(`ssl ${fields.sslMode}`);
  if (fields.searchPath) parts.push(`search_path ${fields.searchPath}`);
  return parts.join(', ');
}

/**
 * Describes an error in one line: its code and the first line of its message.
 * @param {unknown} error
 */
function describeError(error) {
  if (error instanceof Error) {
    const code = /** @type {any} */ (error).code;
    const message = error.message.split('\n')[0];
    return code ? `${code} ${message}` : message;
  }
  return String(error);
}

/** Formats a duration in ms for the log. */
function ms(/** @type {number} */ millis) {
  return `${millis < 10 ? millis.toFixed(2) : millis.toFixed(1)} ms`;
}

module.exports = { log, shortSid, describeTarget, describeError, redactUrl, ms };
