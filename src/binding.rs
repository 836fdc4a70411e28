//! The `NativeStore` class seen by `index.js`; the only module that uses napi types.
//!
//! Each method converts its arguments, awaits the core store, and lets `error.rs` turn a failure
//! into a JS error. Sessions cross as JSON strings and times as epoch milliseconds.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::config::{ConnectionConfig, PoolConfig, Target};
use crate::dialect::{Settings, DEFAULT_QUERY_TIMEOUT};
use crate::error::StoreError;
use crate::store::Store;

/// Connection and table settings, already normalised by `lib/options.js`.
#[napi(object)]
pub struct NativeOptions {
  /// knex client name or dialect; absent means SQLite.
  pub client: Option<String>,
  /// Database URL; wins over the separate fields.
  pub url: Option<String>,
  pub host: Option<String>,
  pub port: Option<u32>,
  pub user: Option<String>,
  pub password: Option<String>,
  pub database: Option<String>,
  /// SQLite file; `:memory:` for an in-memory database.
  pub filename: Option<String>,
  pub socket_path: Option<String>,
  /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
  pub ssl_mode: Option<String>,
  /// PostgreSQL search_path.
  pub search_path: Option<String>,
  pub table_name: String,
  pub sid_field_name: String,
  pub create_table: bool,
  /// Largest number of pooled connections.
  pub pool_max: Option<u32>,
  /// Connections kept open while idle.
  pub pool_min: Option<u32>,
  /// Wait for a free connection, in ms.
  pub acquire_timeout_ms: Option<u32>,
  /// Time before an idle connection is closed, in ms.
  pub idle_timeout_ms: Option<u32>,
  /// Maximum time of one call, connection wait included, in ms.
  pub query_timeout_ms: Option<u32>,
}

/// Connections of the store's pools.
#[napi(object)]
pub struct NativePoolStats {
  /// Open connections, busy or idle.
  pub size: u32,
  /// Open connections waiting for work.
  pub idle: u32,
}

#[napi]
pub struct NativeStore {
  store: Arc<Store>,
}

#[napi]
impl NativeStore {
  /// Validates the options; no connection is made until the first call.
  #[napi(constructor)]
  pub fn new(options: NativeOptions) -> Result<Self> {
    let port = options
      .port
      .map(|port| {
        u16::try_from(port).map_err(|_| StoreError::InvalidOption {
          option: "knex.connection.port",
          reason: format!("{port} is not a TCP port (1 to 65535)"),
        })
      })
      .transpose()?;
    let connection = ConnectionConfig {
      client: options.client,
      url: options.url,
      host: options.host,
      port,
      user: options.user,
      password: options.password,
      database: options.database,
      filename: options.filename,
      socket_path: options.socket_path,
      ssl_mode: options.ssl_mode,
      search_path: options.search_path,
    };
    let millis = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
    let settings = Settings {
      table_name: options.table_name,
      sid_field_name: options.sid_field_name,
      create_table: options.create_table,
      pool: PoolConfig {
        max: options.pool_max,
        min: options.pool_min,
        acquire_timeout: millis(options.acquire_timeout_ms),
        idle_timeout: millis(options.idle_timeout_ms),
      },
      query_timeout: millis(options.query_timeout_ms).unwrap_or(DEFAULT_QUERY_TIMEOUT),
    };
    let store = Store::new(Target::from_config(&connection)?, settings)?;
    Ok(Self {
      store: Arc::new(store),
    })
  }

  /// Connects and creates or checks the table.
  #[napi]
  pub async fn ready(&self) -> Result<()> {
    Ok(self.store.ready().await?)
  }

  /// Returns the stored JSON of a live session, or null.
  #[napi]
  pub async fn get(&self, sid: String) -> Result<Option<String>> {
    Ok(self.store.get(&sid).await?)
  }

  /// Inserts or replaces a session expiring at `expires` (epoch ms).
  #[napi]
  pub async fn set(&self, sid: String, sess: String, expires: f64) -> Result<()> {
    Ok(self.store.set(sid, sess, expires).await?)
  }

  /// Moves the expiry of a live session; returns the rows changed.
  #[napi]
  pub async fn touch(&self, sid: String, expires: f64) -> Result<f64> {
    Ok(count(self.store.touch(sid, expires).await?))
  }

  /// Deletes a session; returns the rows deleted.
  #[napi]
  pub async fn destroy(&self, sid: String) -> Result<f64> {
    Ok(count(self.store.destroy(sid).await?))
  }

  // The `*Now` forms run on the JS thread when the database allows it (SQLite files whose lock
  // is free). When they return undefined (get) or null (the writes), the caller uses the async
  // form, which also reports every error. Their writes are stored once `commitNow` returns
  // true. The caller commits at the end of its turn of the event loop, so the writes made in
  // one turn share a transaction.

  /// Returns the stored JSON, null when there is no live session, or undefined.
  #[napi]
  pub fn get_now(&self, sid: String) -> Either3<String, Null, Undefined> {
    match self.store.get_now(&sid) {
      Some(Some(json)) => Either3::A(json),
      Some(None) => Either3::B(Null),
      None => Either3::C(()),
    }
  }

  /// Returns 1 once the session is written, or null.
  #[napi]
  pub fn set_now(&self, sid: String, sess: String, expires: f64) -> Option<f64> {
    self.store.set_now(sid, sess, expires).map(count)
  }

  /// Returns the rows changed, or null.
  #[napi]
  pub fn touch_now(&self, sid: String, expires: f64) -> Option<f64> {
    self.store.touch_now(sid, expires).map(count)
  }

  /// Returns the rows deleted, or null.
  #[napi]
  pub fn destroy_now(&self, sid: String) -> Option<f64> {
    self.store.destroy_now(sid).map(count)
  }

  /// Commits the writes of the `*Now` forms; returns false when they are not stored and must
  /// run again through the async forms.
  #[napi]
  pub fn commit_now(&self) -> bool {
    let (committed, checkpoint_due) = self.store.commit_now();
    if checkpoint_due {
      let store = Arc::clone(&self.store);
      napi::bindgen_prelude::spawn(async move { store.checkpoint().await });
    }
    committed
  }

  /// Deletes every session; returns the rows deleted.
  #[napi]
  pub async fn clear(&self) -> Result<f64> {
    Ok(count(self.store.clear().await?))
  }

  /// Counts live sessions.
  #[napi]
  pub async fn length(&self) -> Result<f64> {
    Ok(count(self.store.length().await?))
  }

  /// Returns the stored JSON of every live session.
  #[napi]
  pub async fn all(&self) -> Result<Vec<String>> {
    Ok(self.store.all().await?)
  }

  /// Deletes expired sessions; returns the rows deleted.
  #[napi]
  pub async fn delete_expired(&self) -> Result<f64> {
    Ok(count(self.store.delete_expired().await?))
  }

  /// Returns the connections of the pools, without waiting.
  #[napi]
  pub fn pool_stats(&self) -> NativePoolStats {
    let stats = self.store.pool_stats();
    NativePoolStats {
      size: stats.size,
      idle: stats.idle,
    }
  }

  /// Closes the pools; later calls fail with ERR_STORE_CLOSED.
  #[napi]
  pub async fn close(&self) -> Result<()> {
    self.store.close().await;
    Ok(())
  }
}

/// Turns a row count into a JS number; counts past 2^53 rows do not occur in practice.
fn count(rows: u64) -> f64 {
  #[allow(clippy::cast_precision_loss)]
  let rows = rows as f64;
  rows
}
