'use strict';

// The native addon cannot give async errors a custom `code` (napi-rs issue 2178), so
// src/error.rs writes it as a "[CODE] " prefix of the message. `fromNative` moves it into
// `error.code`. Remove both ends once napi-rs carries custom codes out of async methods.
const CODE_PREFIX = /^\[(ERR_[A-Z_]+)\] /;

/**
 * Moves the code of a native error from its message into `error.code`.
 * @param {unknown} error
 * @returns {unknown}
 */
function fromNative(error) {
  if (error instanceof Error) {
    const match = CODE_PREFIX.exec(error.message);
    if (match) {
      error.code = match[1];
      error.message = error.message.slice(match[0].length);
    }
  }
  return error;
}

/**
 * Creates an error with a stable `code`.
 * @param {string} code
 * @param {string} message
 * @param {ErrorConstructor} [Kind]
 * @param {unknown} [cause]
 */
function codedError(code, message, Kind = Error, cause = undefined) {
  const error = cause === undefined ? new Kind(message) : new Kind(message, { cause });
  Object.defineProperty(error, 'code', { value: code, enumerable: true, writable: true, configurable: true });
  return error;
}

/**
 * Describes a value for an error message without printing its content.
 * @param {unknown} value
 */
function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `a string of ${value.length} characters`;
  if (typeof value === 'number' || typeof value === 'boolean') return `${typeof value} ${value}`;
  return typeof value;
}

module.exports = { fromNative, codedError, describe };
