//! The dialect-agnostic store: opens the backend once, on first use, and forwards each call.
//!
//! Opening is retried by the next call after a failure, so a store built while the database
//! was down starts working once it is back.

#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use crate::batch::WriteQueue;
use crate::config::Target;
use crate::dialect::{Backend, PendingWrite, PoolStats, Settings, WriteOp, CLEANUP_BATCH};
use crate::error::{Result, StoreError};
use crate::reads::ReadQueue;

pub struct Store {
  target: Target,
  settings: Settings,
  opened: OnceCell<Opened>,
  closed: AtomicBool,
  /// True while a WAL checkpoint runs.
  checkpointing: AtomicBool,
  /// True while the last step of a checkpoint runs, which needs the write lock.
  restarting: AtomicBool,
}

/// An open backend with the read slots and write lanes that feed it.
struct Opened {
  backend: Arc<Backend>,
  reads: ReadQueue,
  writes: WriteQueue,
}

impl Store {
  /// Validates the names without touching the database.
  pub fn new(target: Target, settings: Settings) -> Result<Self> {
    let allow_schema = matches!(target, Target::Postgres { .. });
    crate::schema::TableNames::new(&settings.table_name, &settings.sid_field_name, allow_schema)?;
    Ok(Self {
      target,
      settings,
      opened: OnceCell::new(),
      closed: AtomicBool::new(false),
      checkpointing: AtomicBool::new(false),
      restarting: AtomicBool::new(false),
    })
  }

  /// Opens the backend if it is not open yet.
  pub async fn ready(&self) -> Result<()> {
    self.backend().await.map(|_| ())
  }

  // Reads are idempotent, so each one runs a second time when the first lost its connection
  // to a server restart or a killed backend. The pool replaces the connection in between.

  pub async fn get(&self, sid: &str) -> Result<Option<String>> {
    let reads = &self.opened().await?.reads;
    let first = self.bounded("get", reads.get(sid)).await;
    match first {
      Err(error) if error.is_connection_lost() => self.bounded("get", reads.get(sid)).await,
      result => result,
    }
  }

  // On SQLite files, calls first try the direct connection on the caller's thread; `None`
  // sends them down the async path, which also reports every error.

  /// Runs `get` without waiting, or returns `None`.
  pub fn get_now(&self, sid: &str) -> Option<Option<String>> {
    self.direct()?.get(sid, Utc::now())
  }

  // The write forms return the rows changed. The write is stored once `commit_now` returns
  // true. When it returns false, the caller runs the write again through the async form.

  pub fn set_now(&self, sid: String, sess: String, expires_ms: f64) -> Option<u64> {
    let expires = instant("expires", expires_ms).ok()?;
    self.write_now(sid, WriteOp::Set { sess, expires })
  }

  pub fn touch_now(&self, sid: String, expires_ms: f64) -> Option<u64> {
    let expires = instant("expires", expires_ms).ok()?;
    self.write_now(sid, WriteOp::Touch { expires })
  }

  pub fn destroy_now(&self, sid: String) -> Option<u64> {
    self.write_now(sid, WriteOp::Destroy)
  }

  fn write_now(&self, sid: String, op: WriteOp) -> Option<u64> {
    // The last step of a checkpoint needs the write lock for a moment. Direct writes, which
    // take it on every turn of the event loop, starved it, so they go through the async
    // writer meanwhile.
    if self.restarting.load(Ordering::Acquire) {
      return None;
    }
    self.direct()?.write(&PendingWrite { sid, op }, Utc::now())
  }

  /// Commits the writes of the `*_now` forms; returns whether they are stored and whether a
  /// WAL checkpoint is due.
  pub fn commit_now(&self) -> (bool, bool) {
    let direct = self.opened.get().and_then(|opened| opened.backend.direct());
    let (committed, due) = direct.map_or((false, false), crate::dialect::Direct::commit);
    let start = due && !self.checkpointing.swap(true, Ordering::AcqRel);
    (committed, start)
  }

  /// Checkpoints the WAL grown by direct writes, after `commit_now` asked for it. Errors are
  /// left for the next checkpoint.
  ///
  /// A passive checkpoint first copies the WAL into the file while direct writes go on, then
  /// a restarting one copies what they appended meanwhile and lets the WAL start over. Direct
  /// writes pause only for the second, which has little left to copy. With the restarting
  /// step alone, direct writes paused for 3-9 ms, at times 30-75 ms, every 2,000 writes.
  pub async fn checkpoint(&self) {
    if let Some(opened) = self.opened.get() {
      let open = || !self.closed.load(Ordering::Acquire);
      if open() {
        let _ = opened.backend.checkpoint(false).await;
      }
      if open() {
        self.restarting.store(true, Ordering::Release);
        let _ = opened.backend.checkpoint(true).await;
        self.restarting.store(false, Ordering::Release);
      }
    }
    self.checkpointing.store(false, Ordering::Release);
  }

  fn direct(&self) -> Option<&crate::dialect::Direct> {
    if self.closed.load(Ordering::Acquire) {
      return None;
    }
    self.opened.get()?.backend.direct()
  }

  // Writes go through the group-commit lanes of `batch`.
  // NOTE: a write that hits the query timeout may still be committed afterwards, even after a
  // later write of its sid, when the server had already started its statement.

  pub async fn set(&self, sid: String, sess: String, expires_ms: f64) -> Result<()> {
    let expires = instant("expires", expires_ms)?;
    let op = WriteOp::Set { sess, expires };
    self.write("set", sid, op).await.map(|_| ())
  }

  pub async fn touch(&self, sid: String, expires_ms: f64) -> Result<u64> {
    let expires = instant("expires", expires_ms)?;
    self.write("touch", sid, WriteOp::Touch { expires }).await
  }

  pub async fn destroy(&self, sid: String) -> Result<u64> {
    self.write("destroy", sid, WriteOp::Destroy).await
  }

  async fn write(&self, operation: &'static str, sid: String, op: WriteOp) -> Result<u64> {
    let opened = self.opened().await?;
    let write = PendingWrite { sid, op };
    self.bounded(operation, opened.writes.submit(write)).await
  }

  pub async fn clear(&self) -> Result<u64> {
    let backend = self.backend().await?;
    self.bounded("clear", backend.clear()).await
  }

  pub async fn length(&self) -> Result<u64> {
    let backend = self.backend().await?;
    let first = self.bounded("length", backend.length(Utc::now())).await;
    match first {
      Err(error) if error.is_connection_lost() => {
        self.bounded("length", backend.length(Utc::now())).await
      }
      result => result,
    }
  }

  pub async fn all(&self) -> Result<Vec<String>> {
    let backend = self.backend().await?;
    let first = self.bounded("all", backend.all(Utc::now())).await;
    match first {
      Err(error) if error.is_connection_lost() => {
        self.bounded("all", backend.all(Utc::now())).await
      }
      result => result,
    }
  }

  /// Deletes every expired session, in batches; returns the rows deleted.
  pub async fn delete_expired(&self) -> Result<u64> {
    let backend = self.backend().await?;
    let now = Utc::now();
    let mut total = 0;
    loop {
      let deleted = self.bounded("cleanup", backend.delete_expired(now)).await?;
      total += deleted;
      if deleted < u64::from(CLEANUP_BATCH) || self.closed.load(Ordering::Acquire) {
        return Ok(total);
      }
    }
  }

  /// Returns the connections of the pools; all zero before the first call opens them.
  pub fn pool_stats(&self) -> PoolStats {
    let opened = self.opened.get();
    opened
      .map(|opened| opened.backend.pool_stats())
      .unwrap_or_default()
  }

  /// Closes the pools; later calls fail with `ERR_STORE_CLOSED`. Closing twice is harmless.
  pub async fn close(&self) {
    self.closed.store(true, Ordering::Release);
    if let Some(opened) = self.opened.get() {
      // Writes already accepted are committed before the pools close.
      opened.writes.flush().await;
      opened.backend.close().await;
    }
  }

  /// Fails `future` with `ERR_QUERY_TIMEOUT` when it runs longer than the query timeout.
  /// Dropping it closes the connection it used, so the pool opens a new one.
  async fn bounded<T>(
    &self,
    operation: &'static str,
    future: impl Future<Output = Result<T>>,
  ) -> Result<T> {
    let limit = self.settings.query_timeout;
    match tokio::time::timeout(limit, future).await {
      Ok(result) => result,
      Err(_) => Err(StoreError::QueryTimeout {
        operation,
        millis: limit.as_millis(),
      }),
    }
  }

  async fn backend(&self) -> Result<&Backend> {
    Ok(&self.opened().await?.backend)
  }

  async fn opened(&self) -> Result<&Opened> {
    if self.closed.load(Ordering::Acquire) {
      return Err(StoreError::Closed);
    }
    let opened = self
      .opened
      .get_or_try_init(|| async {
        let backend = self
          .bounded("setup", Backend::open(&self.target, &self.settings))
          .await?;
        let lanes = backend.write_lanes();
        let slots = backend.read_slots(self.settings.pool.max);
        let backend = Arc::new(backend);
        let wait = self.settings.pool.acquire();
        let reads = ReadQueue::start(Arc::clone(&backend), slots, wait, self.target.label());
        let timeout = self.settings.query_timeout;
        let writes = WriteQueue::start(Arc::clone(&backend), lanes, timeout);
        Ok::<_, StoreError>(Opened {
          backend,
          reads,
          writes,
        })
      })
      .await?;
    // `close()` may have run while the backend was opening, before it could be closed.
    if self.closed.load(Ordering::Acquire) {
      opened.backend.close().await;
      return Err(StoreError::Closed);
    }
    Ok(opened)
  }
}

/// Converts epoch milliseconds from JS into an instant SQL columns can hold.
fn instant(name: &'static str, millis: f64) -> Result<DateTime<Utc>> {
  // Years 1000 to 9999: MySQL's DATETIME range, which the other dialects' types contain.
  const MIN: f64 = -30_610_224_000_000.0;
  const MAX: f64 = 253_402_300_799_999.0;
  if !millis.is_finite() || !(MIN..=MAX).contains(&millis) {
    return Err(StoreError::InvalidArgument {
      name,
      reason: format!(
        "{millis} is not a time between the years 1000 and 9999 in epoch milliseconds"
      ),
    });
  }
  // The range check above makes the conversion exact apart from dropping fractions of a ms.
  #[allow(clippy::cast_possible_truncation)]
  let whole = millis.floor() as i64;
  DateTime::from_timestamp_millis(whole).ok_or_else(|| StoreError::InvalidArgument {
    name,
    reason: format!("{millis} is out of range"),
  })
}

/// Returns the first characters of a sid, enough to tell sessions apart in logs but too few
/// to use as a credential.
pub fn short_sid(sid: &str) -> String {
  let head: String = sid.chars().take(6).collect();
  if head.len() < sid.len() {
    format!("{head}…")
  } else {
    head
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::config::{ConnectionConfig, PoolConfig};

  fn memory_store() -> Store {
    let config = ConnectionConfig {
      url: Some("sqlite::memory:".into()),
      ..ConnectionConfig::default()
    };
    let settings = Settings {
      table_name: "sessions".into(),
      sid_field_name: "sid".into(),
      create_table: true,
      pool: PoolConfig::default(),
      query_timeout: crate::dialect::DEFAULT_QUERY_TIMEOUT,
    };
    Store::new(Target::from_config(&config).expect("target"), settings).expect("store")
  }

  fn now_ms(offset: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let millis = (Utc::now().timestamp_millis() + offset) as f64;
    millis
  }

  #[tokio::test]
  async fn set_then_get_round_trips() {
    let store = memory_store();
    store
      .set("a".into(), "{\"n\":1}".into(), now_ms(60_000))
      .await
      .expect("set");
    assert_eq!(
      store.get("a").await.expect("get").as_deref(),
      Some("{\"n\":1}")
    );
    assert_eq!(store.length().await.expect("length"), 1);
  }

  #[tokio::test]
  async fn expired_rows_are_invisible_until_deleted() {
    let store = memory_store();
    store
      .set("old".into(), "{}".into(), now_ms(-1))
      .await
      .expect("set old");
    store
      .set("new".into(), "{}".into(), now_ms(60_000))
      .await
      .expect("set new");
    assert_eq!(store.get("old").await.expect("get"), None);
    assert_eq!(store.all().await.expect("all").len(), 1);
    assert_eq!(
      store
        .touch("old".into(), now_ms(60_000))
        .await
        .expect("touch"),
      0
    );
    assert_eq!(store.delete_expired().await.expect("cleanup"), 1);
    assert_eq!(store.destroy("new".into()).await.expect("destroy"), 1);
  }

  #[tokio::test]
  async fn calls_after_close_fail_with_closed() {
    let store = memory_store();
    store.ready().await.expect("ready");
    store.close().await;
    let error = store.get("a").await.expect_err("closed");
    assert_eq!(error.code(), "ERR_STORE_CLOSED");
  }

  #[test]
  fn instant_rejects_values_outside_sql_range() {
    assert!(instant("expires", f64::NAN).is_err());
    assert!(instant("expires", 1e300).is_err());
    assert_eq!(
      instant("expires", 1_893_553_445_678.0)
        .expect("valid")
        .timestamp_millis(),
      1_893_553_445_678
    );
  }

  #[test]
  fn short_sid_keeps_six_characters() {
    assert_eq!(short_sid("abcdefghij"), "abcdef…");
    assert_eq!(short_sid("abc"), "abc");
  }
}
