'use strict';

// The HTTP run: an Express app with express-session on 127.0.0.1, and autocannon in a child
// process sending requests that carry the signed cookies of sessions created beforehand. Each
// request reads its session, increments a counter and so makes express-session save it
// (resave: false, so the save is a store.set because the session changed).
const { fork } = require('node:child_process');
const path = require('node:path');

const express = require('express');
const session = require('express-session');
const signature = require('cookie-signature');

const { CheckError, call, makeSession, newSid, untimed } = require('./workload');

const SECRET = 'benchmark secret, not for production';
const COOKIE_NAME = 'connect.sid';

/** Returns the Cookie header express-session would have set for `sid`. */
function cookieFor(sid) {
  return `${COOKIE_NAME}=${encodeURIComponent(`s:${signature.sign(sid, SECRET)}`)}`;
}

function buildApp(store, failures) {
  const app = express();
  app.use(oneRequestPerSession());
  app.use(session({ store, secret: SECRET, name: COOKIE_NAME, resave: false, saveUninitialized: false }));
  app.get('/', (req, res) => {
    // A request whose session was not loaded from the store would start a new, empty one.
    if (typeof req.session.views !== 'number') {
      failures.notLoaded += 1;
      res.status(500).send('session not loaded from the store');
      return;
    }
    req.session.views += 1;
    res.json({ views: req.session.views });
  });
  app.use((error, req, res, _next) => {
    failures.storeErrors += 1;
    if (failures.firstError === undefined) failures.firstError = error;
    res.status(500).send('store error');
  });
  return app;
}

/**
 * Returns a middleware that delays a request until the previous request carrying the same
 * cookie has finished. Cookies are sent in turn, so two requests share a session only when one
 * lags behind the others by a whole round of sessions, during a long pause for instance. Then
 * both would read the same view count and one increment would be lost, as in any app whose
 * concurrent requests modify one session, and the exact check below would fail.
 */
function oneRequestPerSession() {
  /** @type {Map<string, Promise<void>>} the end of the last request of each cookie */
  const last = new Map();
  return (req, res, next) => {
    const cookie = req.headers.cookie || '';
    const previous = last.get(cookie);
    const done = new Promise((resolve) => {
      res.once('close', resolve);
    });
    last.set(cookie, done);
    done.then(() => {
      if (last.get(cookie) === done) last.delete(cookie);
    });
    if (previous === undefined) next();
    else previous.then(() => next());
  };
}

function listen(app) {
  return new Promise((resolve, reject) => {
    const server = app.listen(0, '127.0.0.1', () => resolve(server));
    server.once('error', reject);
  });
}

function runClient(message) {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'http-client.js'), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let reply;
    child.once('message', (value) => {
      reply = value;
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (reply !== undefined) resolve(reply);
      else reject(new Error(`the autocannon process exited with code ${code} (signal ${signal}) and no result`));
    });
    child.send(message);
  });
}

/**
 * Runs the HTTP benchmark against `store` and checks that every request read and wrote its
 * session: no non-2xx response, and the stored counters add up to the 2xx responses.
 * @param {any} store
 * @param {string} label
 * @param {{ sessions: number, connections: number, durationSec: number }} settings
 */
async function runHttp(store, label, settings) {
  const sids = Array.from({ length: settings.sessions }, newSid);
  const initial = sids.map((_, i) => makeSession(i, 0));
  await untimed(`${label} HTTP setup: set`, sids, (i) => call(store, 'set', sids[i], initial[i]));

  const failures = { notLoaded: 0, storeErrors: 0, firstError: undefined };
  const server = await listen(buildApp(store, failures));
  let result;
  try {
    const { port } = server.address();
    result = await runClient({
      url: `http://127.0.0.1:${port}`,
      cookies: sids.map(cookieFor),
      connections: settings.connections,
      durationSec: settings.durationSec,
    });
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  if (failures.storeErrors > 0) {
    throw new Error(
      `${label} HTTP: ${failures.storeErrors} requests failed in the store: ${failures.firstError.message}`,
      {
        cause: failures.firstError,
      },
    );
  }
  if (failures.notLoaded > 0 || result.non2xx > 0 || result.errors > 0) {
    throw new CheckError(
      `${label} HTTP: ${failures.notLoaded} requests found no session, ${result.non2xx} non-2xx responses, ` +
        `${result.errors} connection errors, out of ${result.completed} requests`,
    );
  }

  // Requests cut off when autocannon stopped may have saved their session without being
  // counted, so the stored total may exceed the 2xx responses by up to one per connection.
  // Requests of one session never overlap (see oneRequestPerSession).
  let views = 0;
  const missing = [];
  await untimed(`${label} HTTP check: get`, sids, async (i) => {
    const stored = await call(store, 'get', sids[i]);
    if (stored === null || typeof stored.views !== 'number') missing.push(sids[i]);
    else views += stored.views;
  });
  if (missing.length > 0) {
    throw new CheckError(`${label} HTTP: ${missing.length} sessions are missing after the run, such as ${missing[0]}`);
  }
  if (views < result.ok || views > result.ok + settings.connections) {
    throw new CheckError(
      `${label} HTTP: the stored view counters add up to ${views}, but ${result.ok} requests got a 2xx ` +
        `response: each of them must have read and saved its session exactly once`,
    );
  }
  await untimed(`${label} HTTP cleanup: destroy`, sids, (i) => call(store, 'destroy', sids[i]));

  return {
    ops: result.completed,
    seconds: result.durationSec,
    opsPerSec: result.completed / result.durationSec,
    p50Ms: result.latencyP50Ms,
    p99Ms: result.latencyP99Ms,
    meanMs: result.latencyMeanMs,
    maxMs: result.latencyMaxMs,
    connections: settings.connections,
    sessions: settings.sessions,
    storedViews: views,
  };
}

module.exports = { runHttp };
