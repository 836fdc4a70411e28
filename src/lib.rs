//! Native core of connect-session-knex, an express-session store for SQLite, PostgreSQL and
//! MySQL/MariaDB.
//!
//! Three layers, each depending only on the one below:
//! - `index.js` and `lib/` (JavaScript): the express-session contract, callbacks, JSON, the
//!   expiry rule, option checks and the cleanup timer.
//! - `binding`: the `NativeStore` class, the only Rust code that uses napi types.
//! - the core, free of napi: `store` (opens the backend once and forwards calls), `batch`
//!   (group commit of writes), `reads` (batched gets), `dialect`
//!   (one module per SQL dialect behind one enum), `config` (URLs and connection fields),
//!   `schema` (identifier checks and quoting) and `error` (codes and messages).
//!
//! napi-rs owns the Tokio runtime; every database call runs on it.

#![deny(clippy::all)]

mod batch;
mod binding;
mod config;
mod dialect;
mod error;
mod reads;
mod schema;
mod store;
