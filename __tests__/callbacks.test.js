'use strict';

// How each store method settles. With a callback, the callback is called exactly once on a
// later tick and the returned promise never rejects. Without one, the promise rejects on error.
const { describe, it, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { backends, openStore, quote, sleep } = require('./helpers');

const SESSION = { cookie: { maxAge: 3600000 }, n: 1 };

// Each method with a call that succeeds on a store holding sid `a`, the value it resolves
// with, and, for methods taking arguments, a call the store rejects before any SQL runs.
const METHODS = {
  get: {
    call: (store, callback) => store.get('a', callback),
    value: SESSION,
    invalid: (store, callback) => store.get(42, callback),
  },
  set: {
    call: (store, callback) => store.set('b', SESSION, callback),
    value: undefined,
    invalid: (store, callback) => store.set('b', 'not a session', callback),
  },
  touch: {
    call: (store, callback) => store.touch('a', SESSION, callback),
    value: undefined,
    invalid: (store, callback) => store.touch('', SESSION, callback),
  },
  destroy: {
    call: (store, callback) => store.destroy('a', callback),
    value: 1,
    invalid: (store, callback) => store.destroy(null, callback),
  },
  all: { call: (store, callback) => store.all(callback), value: [SESSION] },
  length: { call: (store, callback) => store.length(callback), value: 1 },
  clear: { call: (store, callback) => store.clear(callback), value: 1 },
  close: { call: (store, callback) => store.close(callback), value: undefined },
};

/**
 * Runs `invoke(callback)` and records each call of the callback and whether it came before
 * `invoke` returned. Waits for the first call, then a little longer to catch a second one.
 */
async function callBack(invoke) {
  const calls = [];
  let returned = false;
  let promise;
  const called = new Promise((resolve) => {
    promise = invoke((...args) => {
      calls.push({ args, synchronous: !returned });
      resolve();
    });
  });
  returned = true;
  await Promise.race([called, sleep(5000)]);
  await sleep(20);
  return { calls, promise };
}

/** Records `unhandledRejection` events until `stop()` is called. */
function watchRejections() {
  const reasons = [];
  const onRejection = (reason) => reasons.push(reason);
  process.on('unhandledRejection', onRejection);
  return {
    reasons,
    stop: () => process.removeListener('unhandledRejection', onRejection),
  };
}

/**
 * Runs `body` with the test runner's `uncaughtException` listeners replaced by one that
 * records the errors, so that an error thrown by a callback on purpose does not fail the test.
 */
async function catchUncaught(body) {
  const errors = [];
  const saved = process.rawListeners('uncaughtException');
  const onUncaught = (error) => errors.push(error);
  process.removeAllListeners('uncaughtException');
  process.on('uncaughtException', onUncaught);
  try {
    await body();
  } finally {
    process.removeListener('uncaughtException', onUncaught);
    for (const listener of saved) process.on('uncaughtException', listener);
  }
  return errors;
}

for (const backend of backends) {
  describe(backend.name, { skip: backend.skip }, () => {
    let ctx;
    let rejections;
    beforeEach(async () => {
      ctx = await openStore(backend);
      await ctx.store.set('a', SESSION);
      rejections = watchRejections();
    });
    afterEach(async () => {
      rejections.stop();
      await ctx.cleanup();
    });

    for (const [method, { call, value, invalid }] of Object.entries(METHODS)) {
      describe(`${method}(…, callback)`, () => {
        it('calls back exactly once', async () => {
          const { calls } = await callBack((callback) => call(ctx.store, callback));
          assert.equal(calls.length, 1);
        });

        it('calls back on a later tick', async () => {
          const { calls } = await callBack((callback) => call(ctx.store, callback));
          assert.equal(calls[0]?.synchronous, false);
        });

        it('passes null and the result', async () => {
          const { calls } = await callBack((callback) => call(ctx.store, callback));
          assert.equal(calls[0]?.args[0], null);
          assert.deepEqual(calls[0]?.args[1], value);
        });

        it('resolves with the same result', async () => {
          const { promise } = await callBack((callback) => call(ctx.store, callback));
          assert.ok(promise instanceof Promise);
          assert.deepEqual(await promise, value);
        });

        it('returns a promise without callback', async () => {
          const promise = call(ctx.store);
          assert.ok(promise instanceof Promise);
          assert.deepEqual(await promise, value);
        });

        it('calls a throwing callback once', async () => {
          let calls = 0;
          const uncaught = await catchUncaught(async () => {
            call(ctx.store, () => {
              calls += 1;
              throw new Error('boom');
            });
            await sleep(100);
          });
          assert.equal(calls, 1);
          assert.deepEqual(
            uncaught.map((error) => error.message),
            ['boom'],
          );
          assert.deepEqual(rejections.reasons, []);
        });

        if (method !== 'close') {
          describe('on a closed store', () => {
            beforeEach(() => ctx.store.close());

            it('calls back once with ERR_STORE_CLOSED', async () => {
              const { calls } = await callBack((callback) => call(ctx.store, callback));
              assert.equal(calls.length, 1);
              assert.ok(calls[0].args[0] instanceof Error);
              assert.equal(calls[0].args[0].code, 'ERR_STORE_CLOSED');
            });

            it('calls back on a later tick', async () => {
              const { calls } = await callBack((callback) => call(ctx.store, callback));
              assert.equal(calls[0]?.synchronous, false);
            });

            it('resolves with undefined', async () => {
              const { promise } = await callBack((callback) => call(ctx.store, callback));
              assert.equal(await promise, undefined);
            });

            it('rejects without callback', async () => {
              await assert.rejects(call(ctx.store), { code: 'ERR_STORE_CLOSED' });
            });

            it('leaves no unhandled rejection', async () => {
              await callBack((callback) => call(ctx.store, callback));
              assert.deepEqual(rejections.reasons, []);
            });

            it('calls a throwing callback once', async () => {
              let calls = 0;
              const uncaught = await catchUncaught(async () => {
                call(ctx.store, () => {
                  calls += 1;
                  throw new Error('boom');
                });
                await sleep(100);
              });
              assert.equal(calls, 1);
              assert.deepEqual(
                uncaught.map((error) => error.message),
                ['boom'],
              );
            });
          });
        }

        if (invalid) {
          describe('with invalid arguments', () => {
            it('calls back once with ERR_INVALID_ARGUMENT', async () => {
              const { calls } = await callBack((callback) => invalid(ctx.store, callback));
              assert.equal(calls.length, 1);
              assert.ok(calls[0].args[0] instanceof Error);
              assert.equal(calls[0].args[0].code, 'ERR_INVALID_ARGUMENT');
            });

            it('calls back on a later tick', async () => {
              const { calls } = await callBack((callback) => invalid(ctx.store, callback));
              assert.equal(calls[0]?.synchronous, false);
            });

            it('resolves with undefined', async () => {
              const { promise } = await callBack((callback) => invalid(ctx.store, callback));
              assert.equal(await promise, undefined);
            });

            it('rejects without callback', async () => {
              await assert.rejects(invalid(ctx.store), { code: 'ERR_INVALID_ARGUMENT' });
            });

            it('leaves no unhandled rejection', async () => {
              await callBack((callback) => invalid(ctx.store, callback));
              assert.deepEqual(rejections.reasons, []);
            });
          });
        }
      });
    }

    // On SQLite, dropping the table from another connection makes every statement of the ready
    // store fail in the database.
    if (backend.name === 'sqlite') {
      describe('after the table is dropped', () => {
        beforeEach(async () => {
          await ctx.raw.query(`DROP TABLE ${quote(backend, ctx.tableName)}`);
        });

        for (const [method, { call }] of Object.entries(METHODS)) {
          if (method === 'close') continue;

          it(`calls the ${method} callback once`, async () => {
            const { calls } = await callBack((callback) => call(ctx.store, callback));
            assert.equal(calls.length, 1);
            assert.ok(calls[0].args[0] instanceof Error);
          });

          it(`gives the ${method} error a code`, async () => {
            const { calls } = await callBack((callback) => call(ctx.store, callback));
            assert.match(String(calls[0]?.args[0]?.code), /^ERR_[A-Z_]+$/);
          });

          it(`leaves no unhandled ${method} rejection`, async () => {
            call(ctx.store, () => {});
            await sleep(200);
            assert.deepEqual(rejections.reasons, []);
          });

          it(`rejects ${method} without callback`, async () => {
            await assert.rejects(call(ctx.store), Error);
          });
        }
      });
    }
  });
}
