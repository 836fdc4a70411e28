//! One small interface over the three SQL dialects.
//!
//! `Backend` is an enum rather than a trait object because the dialect is picked at run time from
//! the configuration, the set is closed, and each arm only forwards. The three modules keep the
//! same function names in the same order, so a diff between them shows only real differences.

#![forbid(unsafe_code)]

mod mysql;
mod postgres;
mod sqlite;
mod sqlite_direct;

pub use sqlite_direct::Direct;

use chrono::{DateTime, Utc};

use crate::config::{PoolConfig, Target};
use crate::error::{Result, StoreError};
use crate::schema::TableNames;

/// Most rows one cleanup statement deletes, so a backlog of expired rows never holds a long lock.
pub const CLEANUP_BATCH: u32 = 5_000;

/// Default bound on one call, connection wait included; above the default acquire timeout so
/// that an exhausted pool reports ERR_POOL_TIMEOUT first.
pub const DEFAULT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Returns how long a statement may wait for a row lock before the server ends it: a quarter
/// of the query timeout. A batch stopped by a lock held by another client then runs its writes
/// again one by one, so only the write of the locked row fails, and the others still finish
/// within the query timeout.
pub fn lock_timeout(query_timeout: std::time::Duration) -> std::time::Duration {
  (query_timeout / 4).max(std::time::Duration::from_millis(1))
}

/// Table names and limits a backend is opened with, besides its target.
#[derive(Clone, Debug)]
pub struct Settings {
  pub table_name: String,
  pub sid_field_name: String,
  pub create_table: bool,
  pub pool: PoolConfig,
  /// Maximum time of one call before it fails with ERR_QUERY_TIMEOUT.
  pub query_timeout: std::time::Duration,
}

/// SQL text of every operation, built once when the backend opens.
#[derive(Debug)]
struct Statements {
  get: String,
  set: String,
  touch: String,
  destroy: String,
  clear: String,
  length: String,
  all: String,
  delete_expired: String,
}

/// One write waiting in the group-commit queue.
#[derive(Debug)]
pub struct PendingWrite {
  pub sid: String,
  pub op: WriteOp,
}

#[derive(Debug)]
pub enum WriteOp {
  Set {
    sess: String,
    expires: DateTime<Utc>,
  },
  Touch {
    expires: DateTime<Utc>,
  },
  Destroy,
}

impl WriteOp {
  /// Returns the store method that made this write, for error messages.
  pub fn name(&self) -> &'static str {
    match self {
      Self::Set { .. } => "set",
      Self::Touch { .. } => "touch",
      Self::Destroy => "destroy",
    }
  }
}

impl PendingWrite {
  /// Returns the bytes this write sends, for bounding batches.
  pub fn size(&self) -> usize {
    match &self.op {
      WriteOp::Set { sess, .. } => self.sid.len() + sess.len(),
      _ => self.sid.len(),
    }
  }

  fn same_kind(&self, other: &Self) -> bool {
    std::mem::discriminant(&self.op) == std::mem::discriminant(&other.op)
  }
}

/// Splits a batch into runs of one kind of write with distinct sids, in order, so each run
/// can become one multi-row statement without a row being changed twice by it.
fn runs(writes: &[PendingWrite]) -> Vec<std::ops::Range<usize>> {
  let mut runs = Vec::new();
  let mut start = 0;
  let mut sids = std::collections::HashSet::new();
  for (index, write) in writes.iter().enumerate() {
    let breaks =
      index > start && (!write.same_kind(&writes[start]) || sids.contains(write.sid.as_str()));
    if breaks {
      runs.push(start..index);
      start = index;
      sids.clear();
    }
    sids.insert(write.sid.as_str());
  }
  if start < writes.len() {
    runs.push(start..writes.len());
  }
  runs
}

/// When the backend last lost a connection, so pooled connections are checked only when one
/// may be dead. Pinging before every acquire (sqlx's default) costs a round trip per call.
#[derive(Clone, Debug, Default)]
pub struct Liveness(std::sync::Arc<std::sync::atomic::AtomicI64>);

/// Idle time after which a pooled connection is pinged before use: a server restart or an idle
/// timeout kills connections that sat unused, not ones in steady use.
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long after a lost connection every pooled connection is pinged before use.
const SUSPECT_FOR_MS: i64 = 5_000;

impl Liveness {
  /// Records a lost connection, if `error` is one.
  pub fn note(&self, error: &crate::error::StoreError) {
    if error.is_connection_lost() {
      let now = Utc::now().timestamp_millis();
      self.0.store(now, std::sync::atomic::Ordering::Relaxed);
    }
  }

  /// Tells whether a connection idle for `idle` should be pinged before use.
  fn should_ping(&self, idle: std::time::Duration) -> bool {
    let lost = self.0.load(std::sync::atomic::Ordering::Relaxed);
    idle >= PING_AFTER_IDLE || Utc::now().timestamp_millis() - lost < SUSPECT_FOR_MS
  }

  /// Builds the pool options that ping a connection before use only when `should_ping`.
  pub fn pool_options<DB: sqlx::Database>(&self) -> sqlx::pool::PoolOptions<DB> {
    let liveness = self.clone();
    sqlx::pool::PoolOptions::<DB>::new()
      .test_before_acquire(false)
      .before_acquire(move |conn, meta| {
        let ping = liveness.should_ping(meta.idle_for);
        Box::pin(async move {
          if !ping {
            return Ok(true);
          }
          // A failed ping makes the pool close this connection and try another.
          Ok(sqlx::Connection::ping(conn).await.is_ok())
        })
      })
  }
}

/// Connections of a backend's pools.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
  /// Open connections, busy or idle.
  pub size: u32,
  /// Open connections waiting for work.
  pub idle: u32,
}

impl PoolStats {
  fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
    Self {
      size: pool.size(),
      idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
    }
  }

  fn add(&mut self, other: Self) {
    self.size += other.size;
    self.idle += other.idle;
  }
}

/// A connected dialect with its pools and statements.
pub enum Backend {
  Sqlite(sqlite::Sqlite),
  Postgres(postgres::Postgres),
  Mysql(mysql::Mysql),
}

impl Backend {
  /// Connects, creates or checks the table, and prepares the statements for its column types.
  pub async fn open(target: &Target, settings: &Settings) -> Result<Self> {
    match target {
      Target::Sqlite {
        options,
        in_memory,
        label,
      } => {
        let names = TableNames::new(&settings.table_name, &settings.sid_field_name, false)?;
        let backend = sqlite::Sqlite::open(options, *in_memory, label, names, settings).await?;
        Ok(Self::Sqlite(backend))
      }
      Target::Postgres { options, label } => {
        let names = TableNames::new(&settings.table_name, &settings.sid_field_name, true)?;
        let backend = postgres::Postgres::open(options, label, names, settings).await?;
        Ok(Self::Postgres(backend))
      }
      Target::Mysql { options, label } => {
        let names = TableNames::new(&settings.table_name, &settings.sid_field_name, false)?;
        let backend = mysql::Mysql::open(options, label, names, settings).await?;
        Ok(Self::Mysql(backend))
      }
    }
  }

  /// Returns the stored JSON of a live session.
  pub async fn get(&self, sid: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    match self {
      Self::Sqlite(db) => db.get(sid, now).await,
      Self::Postgres(db) => db.get(sid, now).await,
      Self::Mysql(db) => db.get(sid, now).await,
    }
  }

  /// Returns the stored JSON of several live sessions, in the order of `sids`.
  pub async fn get_many(&self, sids: &[String], now: DateTime<Utc>) -> Result<Vec<Option<String>>> {
    match self {
      Self::Postgres(db) => db.get_many(sids, now).await,
      Self::Mysql(db) => db.get_many(sids, now).await,
      // SQLite is never batched (see `read_slots`), so this only keeps the call total.
      Self::Sqlite(_) => {
        let mut found = Vec::with_capacity(sids.len());
        for sid in sids {
          found.push(self.get(sid, now).await?);
        }
        Ok(found)
      }
    }
  }

  /// Inserts or replaces a session in one statement.
  pub async fn set(&self, sid: &str, sess: &str, expires: DateTime<Utc>) -> Result<()> {
    match self {
      Self::Sqlite(db) => db.set(sid, sess, expires).await,
      Self::Postgres(db) => db.set(sid, sess, expires).await,
      Self::Mysql(db) => db.set(sid, sess, expires).await,
    }
  }

  /// Moves the expiry of a live session; returns the rows changed (0 or 1).
  pub async fn touch(&self, sid: &str, expires: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64> {
    match self {
      Self::Sqlite(db) => db.touch(sid, expires, now).await,
      Self::Postgres(db) => db.touch(sid, expires, now).await,
      Self::Mysql(db) => db.touch(sid, expires, now).await,
    }
  }

  /// Deletes one session, live or expired; returns the rows deleted.
  pub async fn destroy(&self, sid: &str) -> Result<u64> {
    match self {
      Self::Sqlite(db) => db.destroy(sid).await,
      Self::Postgres(db) => db.destroy(sid).await,
      Self::Mysql(db) => db.destroy(sid).await,
    }
  }

  /// Deletes every session; returns the rows deleted.
  pub async fn clear(&self) -> Result<u64> {
    match self {
      Self::Sqlite(db) => db.clear().await,
      Self::Postgres(db) => db.clear().await,
      Self::Mysql(db) => db.clear().await,
    }
  }

  /// Counts live sessions.
  pub async fn length(&self, now: DateTime<Utc>) -> Result<u64> {
    match self {
      Self::Sqlite(db) => db.length(now).await,
      Self::Postgres(db) => db.length(now).await,
      Self::Mysql(db) => db.length(now).await,
    }
  }

  /// Returns the stored JSON of every live session.
  pub async fn all(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
    match self {
      Self::Sqlite(db) => db.all(now).await,
      Self::Postgres(db) => db.all(now).await,
      Self::Mysql(db) => db.all(now).await,
    }
  }

  /// Deletes at most `CLEANUP_BATCH` expired sessions; returns the rows deleted.
  pub async fn delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
    match self {
      Self::Sqlite(db) => db.delete_expired(now).await,
      Self::Postgres(db) => db.delete_expired(now).await,
      Self::Mysql(db) => db.delete_expired(now).await,
    }
  }

  /// Commits a batch of writes and returns each one's result, in order. Several writes go
  /// into one transaction. When that fails, or the dialect cannot give each write its own
  /// count, each is run on its own, so one bad write fails only its own call.
  pub async fn write_batch(&self, writes: &[PendingWrite], now: DateTime<Utc>) -> Vec<Result<u64>> {
    if writes.len() > 1 {
      let batched = match self {
        Self::Sqlite(db) => db.write_batch(writes, now).await,
        Self::Postgres(db) => db.write_batch(writes, now).await,
        Self::Mysql(db) => db.write_batch(writes, now).await,
      };
      match batched {
        Ok(Some(counts)) => return counts.into_iter().map(Ok).collect(),
        // Run one by one, each write would meet the same error again (on SQLite, wait out
        // the busy timeout once per write), so all of them fail now.
        Err(error) => {
          let wide = |code: &str| matches!(self, Self::Sqlite(_)) && sqlite::is_lock_code(code);
          let copies: Option<Vec<StoreError>> = writes[1..]
            .iter()
            .map(|_| error.copy_for_batch(wide))
            .collect();
          if let Some(copies) = copies {
            return std::iter::once(error).chain(copies).map(Err).collect();
          }
        }
        Ok(None) => {}
      }
    }
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
      results.push(self.write_one(write, now).await);
    }
    results
  }

  async fn write_one(&self, write: &PendingWrite, now: DateTime<Utc>) -> Result<u64> {
    match &write.op {
      WriteOp::Set { sess, expires } => self.set(&write.sid, sess, *expires).await.map(|()| 1),
      WriteOp::Touch { expires } => self.touch(&write.sid, *expires, now).await,
      WriteOp::Destroy => self.destroy(&write.sid).await,
    }
  }

  /// Returns the connection that runs calls on the JS thread, on SQLite files.
  pub fn direct(&self) -> Option<&Direct> {
    match self {
      Self::Sqlite(db) => db.direct(),
      _ => None,
    }
  }

  /// Checkpoints the WAL that direct writes grow, passively or with `restart`; nothing to do
  /// on the servers.
  pub async fn checkpoint(&self, restart: bool) -> Result<()> {
    match self {
      Self::Sqlite(db) => db.checkpoint(restart).await,
      _ => Ok(()),
    }
  }

  /// Returns how many gets run at once before further ones are batched; `usize::MAX` turns
  /// batching off. On SQLite a query costs no round trip, so gets are never batched there.
  pub fn read_slots(&self, pool_max: Option<u32>) -> usize {
    match self {
      Self::Sqlite(_) => usize::MAX,
      // Few slots make large batches, and one multi-row query costs the server far less than
      // the single-row queries it replaces. 2 slots leave one batch running while another
      // waits on a slow row. Measured with 16 gets in flight on a 2-core machine that also ran
      // the server: 2 slots did 22,000/s on PostgreSQL 15 and 23,000-28,000/s on MariaDB 10.11,
      // 8 slots 13,000/s on both.
      _ => {
        let others = usize::try_from(pool_max.unwrap_or(10).saturating_sub(1)).unwrap_or(1);
        others.clamp(1, 2)
      }
    }
  }

  /// Returns how many write lanes run at once: one on every backend. SQLite has a single
  /// writer. On the servers one lane gathers every write that arrives while a batch runs into
  /// the next batch, and a commit of many rows costs the server little more than a commit of
  /// one. Measured with 16 writes in flight on a 2-core machine that also ran the server, one
  /// lane did 13,000-21,000 writes/s on PostgreSQL 15 and 14,000-21,000/s on MariaDB 10.11.
  /// Four lanes did 7,000-10,000/s and 10,000-14,000/s, with three times the server CPU per
  /// write.
  pub fn write_lanes(&self) -> usize {
    1
  }

  /// Returns the connections of the pools.
  pub fn pool_stats(&self) -> PoolStats {
    match self {
      Self::Sqlite(db) => db.pool_stats(),
      Self::Postgres(db) => db.pool_stats(),
      Self::Mysql(db) => db.pool_stats(),
    }
  }

  /// Closes the pools, waiting for connections in use to be returned.
  pub async fn close(&self) {
    match self {
      Self::Sqlite(db) => db.close().await,
      Self::Postgres(db) => db.close().await,
      Self::Mysql(db) => db.close().await,
    }
  }
}

/// Lines the rows found by a multi-row lookup up with the sids of the request, matching
/// exactly. A sid requested twice in one batch gets the row each time.
fn in_order(sids: &[String], rows: Vec<(String, String)>) -> Vec<Option<String>> {
  let found: std::collections::HashMap<String, String> = rows.into_iter().collect();
  sids.iter().map(|sid| found.get(sid).cloned()).collect()
}

/// Checks that a table found in the database has the three columns the store uses.
fn check_columns(names: &TableNames, columns: &[(String, String)]) -> Result<()> {
  for wanted in [names.sid_column.as_str(), "sess", "expired"] {
    if !columns.iter().any(|(name, _)| name == wanted) {
      let found: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
      return Err(crate::error::StoreError::TableUnusable {
        table: names.display(),
        reason: format!(
          "column {wanted:?} is missing (found {}); check tableName and sidFieldName",
          found.join(", ")
        ),
      });
    }
  }
  Ok(())
}

/// Returns the type name the database reports for `column`, lowercased.
fn column_type(columns: &[(String, String)], column: &str) -> String {
  columns
    .iter()
    .find(|(name, _)| name == column)
    .map(|(_, kind)| kind.to_ascii_lowercase())
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
  use super::*;

  fn write(sid: &str, op: WriteOp) -> PendingWrite {
    PendingWrite {
      sid: sid.into(),
      op,
    }
  }

  #[test]
  fn runs_break_on_kind_change_and_repeated_sid() {
    let now = Utc::now();
    let set = || WriteOp::Set {
      sess: "{}".into(),
      expires: now,
    };
    let writes = [
      write("a", set()),
      write("b", set()),
      write("a", set()),
      write("a", WriteOp::Destroy),
      write("b", WriteOp::Destroy),
      write("c", WriteOp::Touch { expires: now }),
    ];
    assert_eq!(runs(&writes), vec![0..2, 2..3, 3..5, 5..6]);
  }
}
