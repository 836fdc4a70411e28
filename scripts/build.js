'use strict';

// Builds the native addon with cargo and copies it to connect-session-knex.node.
// Usage: node scripts/build.js [--debug] [--if-missing]
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const output = path.join(root, 'connect-session-knex.node');
const debug = process.argv.includes('--debug');

if (process.argv.includes('--if-missing') && fs.existsSync(output)) {
  process.exit(0);
}

const cargo = process.env.CARGO || 'cargo';
const args = ['build', '--lib', '--locked'];
if (!debug) args.push('--release');
console.error(`connect-session-knex: building the native addon (${cargo} ${args.join(' ')})`);
const result = spawnSync(cargo, args, { cwd: root, stdio: 'inherit' });
if (result.error && result.error.code === 'ENOENT') {
  console.error(
    'connect-session-knex: cargo was not found. Install Rust (https://rustup.rs) and run ' +
      '"npm rebuild connect-session-knex", or use a platform with a prebuilt binary.',
  );
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status || 1);

const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const library =
  {
    darwin: 'libconnect_session_knex.dylib',
    win32: 'connect_session_knex.dll',
  }[process.platform] || 'libconnect_session_knex.so';
const built = path.join(targetDir, debug ? 'debug' : 'release', library);
// Copy through a temporary name so a running process never loads a half-written file.
fs.copyFileSync(built, `${output}.tmp`);
fs.renameSync(`${output}.tmp`, output);
console.error(`connect-session-knex: wrote ${path.relative(process.cwd(), output) || output}`);
