'use strict';

// Loads the compiled addon. It takes the first that exists of `connect-session-knex.node`, which
// `npm install` builds from source (scripts/build.js), a prebuilt
// `connect-session-knex.<platform>.node` beside the package, and a prebuilt package
// `connect-session-knex-<platform>`. Platform names follow napi-rs, such as linux-x64-gnu,
// linux-arm64-musl, darwin-arm64 or win32-x64-msvc.
const path = require('node:path');
const fs = require('node:fs');
const { BINARY_NAME, platformNames, findPrebuilt, root } = require('./platform');
const { codedError } = require('./errors');

function load() {
  const built = path.join(root, `${BINARY_NAME}.node`);
  if (fs.existsSync(built)) return require(built);
  const prebuilt = findPrebuilt();
  if (prebuilt) return require(prebuilt.path);
  const names = platformNames().join(' or ');
  throw codedError(
    'ERR_ADDON_MISSING',
    `connect-session-knex: the native addon is not built for ${names}. ` +
      `Run "npm rebuild connect-session-knex" with Rust (cargo) installed, or "npm run build" in its folder.`,
  );
}

module.exports = load();
