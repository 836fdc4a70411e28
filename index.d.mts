// Types of connect-session-knex for `import` (index.mjs); they are those of index.d.ts.
export { KnexSessionStore, KnexSessionStore as ConnectSessionKnexStore, KnexSessionStore as default } from './index.js';
export type {
  KnexSessionStoreErrorCode,
  KnexSessionStoreError,
  KnexConfig,
  KnexConnection,
  KnexLike,
  PoolOptions,
  KnexSessionStoreOptions,
  KnexSessionStoreResolvedOptions,
  LatencyStats,
  OperationStats,
  KnexSessionStoreStats,
} from './index.js';
