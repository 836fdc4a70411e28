'use strict';

// Checks index.d.ts and index.d.mts with the TypeScript compiler: typed usage of every option
// and both call forms of every method must compile under --strict (and the lines marked
// @ts-expect-error must fail), and TypeScript's emitted default import must work at run time.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const repo = path.join(__dirname, '..');
const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
const fixtures = path.join(__dirname, 'fixtures');
const usage = [path.join(fixtures, 'typed-usage.ts'), path.join(fixtures, 'typed-usage.mts')];

function runTsc(args) {
  process.stderr.write(`types.test: $ tsc ${args.map((arg) => path.relative(repo, arg) || arg).join(' ')}\n`);
  return spawnSync(process.execPath, [tsc, ...args], { cwd: repo, encoding: 'utf8' });
}

const common = ['--strict', '--target', 'es2022', '--types', 'node', '--pretty', 'false'];

test('types compile under nodenext resolution', () => {
  const result = runTsc(['--noEmit', ...common, '--module', 'nodenext', '--moduleResolution', 'nodenext', ...usage]);
  assert.equal(result.status, 0, result.stdout + result.stderr);
});

test('types compile under bundler resolution', () => {
  const result = runTsc(['--noEmit', ...common, '--module', 'preserve', '--moduleResolution', 'bundler', ...usage]);
  assert.equal(result.status, 0, result.stdout + result.stderr);
});

test('wrong use fails to compile', () => {
  const dir = fs.mkdtempSync(path.join(fixtures, '.wrong-'));
  try {
    const file = path.join(dir, 'wrong.ts');
    fs.writeFileSync(
      file,
      "import { KnexSessionStore } from 'connect-session-knex';\nnew KnexSessionStore({ tableName: 1 });\n",
    );
    const result = runTsc(['--noEmit', ...common, '--module', 'nodenext', '--moduleResolution', 'nodenext', file]);
    assert.notEqual(result.status, 0);
    assert.match(result.stdout, /wrong\.ts\(2,\d+\): error TS2322/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('CommonJS default import is the class', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csk-types-'));
  try {
    // The emitted file loads the package by name, as in an app.
    fs.mkdirSync(path.join(dir, 'node_modules'));
    fs.symlinkSync(repo, path.join(dir, 'node_modules', 'connect-session-knex'), 'dir');
    const expressSession = path.dirname(require.resolve('express-session/package.json'));
    fs.symlinkSync(expressSession, path.join(dir, 'node_modules', 'express-session'), 'dir');
    const compiled = runTsc([
      ...common,
      '--module',
      'commonjs',
      '--moduleResolution',
      'bundler',
      '--esModuleInterop',
      '--rootDir',
      fixtures,
      '--outDir',
      path.join(dir, 'out'),
      path.join(fixtures, 'typed-runtime.ts'),
    ]);
    assert.equal(compiled.status, 0, compiled.stdout + compiled.stderr);
    const run = spawnSync(process.execPath, [path.join(dir, 'out', 'typed-runtime.js')], {
      cwd: dir,
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stdout.trim(), 'length 1');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
