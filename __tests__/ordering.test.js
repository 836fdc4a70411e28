'use strict';

// Writes of one sid started together take effect in call order, as express-session expects:
// a destroy (logout) started after a save must win over it.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const { backends, openStore } = require('./helpers');

const session = (n) => ({ cookie: { maxAge: 60000 }, n });

for (const backend of backends) {
  describe(`${backend.name} write order of one sid`, { skip: backend.skip }, () => {
    let ctx;
    before(async () => {
      ctx = await openStore(backend);
    });
    after(() => ctx.cleanup());

    it('destroy after set wins', async () => {
      let survived = 0;
      for (let round = 0; round < 100; round += 1) {
        const sid = `logout-${round}`;
        await ctx.store.set(sid, session(1));
        await Promise.all([ctx.store.set(sid, session(2)), ctx.store.destroy(sid)]);
        if ((await ctx.store.get(sid)) !== null) survived += 1;
      }
      assert.equal(survived, 0, `the session survived its destroy in ${survived} of 100 rounds`);
    });

    it('last of five sets wins', async () => {
      let wrong = 0;
      for (let round = 0; round < 60; round += 1) {
        const sid = `order-${round}`;
        await Promise.all([0, 1, 2, 3, 4].map((n) => ctx.store.set(sid, session(n))));
        if ((await ctx.store.get(sid)).n !== 4) wrong += 1;
      }
      assert.equal(wrong, 0, `an earlier set won in ${wrong} of 60 rounds`);
    });

    it('set after destroy recreates', async () => {
      await ctx.store.set('again', session(1));
      await Promise.all([ctx.store.destroy('again'), ctx.store.set('again', session(3))]);
      assert.equal((await ctx.store.get('again')).n, 3);
    });
  });
}
