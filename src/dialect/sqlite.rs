//! SQLite: `expired` is ISO-8601 text with milliseconds and `Z`, as knex writes `toISOString()`.
//!
//! Comparisons go through `unixepoch(expired, 'subsec')`, so rows in the older
//! `YYYY-MM-DD HH:MM:SS` form compare by the instant they name, not by their spelling.
//! `sess` is read as text whatever its storage class: a `json` column has numeric affinity, so
//! a row whose sess is a bare number is stored as INTEGER, and the checked decoder would fail.
//! Writes go through a pool of one connection and reads through a pool of several, because
//! SQLite allows one writer at a time and WAL mode lets readers run beside it.

#![forbid(unsafe_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
  SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use super::sqlite_direct::{iso, seconds, Direct, DirectStatements};
use super::{check_columns, PendingWrite, PoolStats, Settings, Statements, WriteOp, CLEANUP_BATCH};
use crate::error::{Result, StoreError};
use crate::schema::{Quote, TableNames};

/// Readers opened by default beside the single writer.
const DEFAULT_READERS: u32 = 4;

/// Bytes the WAL file is cut back to when it starts over, so a burst does not leave a large
/// file behind.
pub(super) const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// How long a write waits for another process's lock on the file before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sqlite {
  writer: SqlitePool,
  reader: SqlitePool,
  /// True when `reader` and `writer` are one pool (in-memory databases).
  shared: bool,
  /// The connection for calls on the JS thread; files only, since a second connection to
  /// `:memory:` would see a database of its own.
  direct: Option<Direct>,
  sql: Statements,
  label: String,
}

impl Sqlite {
  pub async fn open(
    options: &SqliteConnectOptions,
    in_memory: bool,
    label: &str,
    names: TableNames,
    settings: &Settings,
  ) -> Result<Self> {
    let mut options = options.clone().busy_timeout(BUSY_TIMEOUT);
    if !in_memory {
      // NORMAL in WAL mode keeps every commit across a process crash; a power loss may undo
      // the last commits but never corrupts the file.
      options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string());
    }
    let setup_error = |error| match error {
      Setup::Sql(error) => StoreError::from_sqlx("creating the table", label, error),
      Setup::Store(error) => error,
    };
    let pool = settings.pool;
    let acquire = pool.acquire();
    // A connection to a file does not die on its own, so sqlx's ping before each use is skipped.
    let writer_options = SqlitePoolOptions::new()
      .test_before_acquire(false)
      .max_connections(1)
      .acquire_timeout(acquire);

    let sql = statements(&names);
    let (writer, reader, direct) = if in_memory {
      // Every connection to `:memory:` is a database of its own, so one connection serves
      // reads and writes, and it is never dropped as idle.
      let writer = writer_options
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .map_err(|error| open_error(label, error))?;
      let mut conn = writer
        .acquire()
        .await
        .map_err(|error| open_error(label, error))?;
      ensure_table(&mut conn, &names, settings.create_table)
        .await
        .map_err(setup_error)?;
      drop(conn);
      (writer.clone(), writer, None)
    } else {
      let mut conn = connect_when_unlocked(&options)
        .await
        .map_err(|error| open_error(label, error))?;
      ensure_table(&mut conn, &names, settings.create_table)
        .await
        .map_err(setup_error)?;
      conn
        .close()
        .await
        .map_err(|error| StoreError::from_sqlx("setup", label, error))?;
      let writer = writer_options
        .idle_timeout(pool.idle())
        .connect_lazy_with(options.clone());
      let reader = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(pool.max.unwrap_or(DEFAULT_READERS).max(1))
        .min_connections(pool.min.unwrap_or(0))
        .acquire_timeout(acquire)
        .idle_timeout(pool.idle())
        .connect_lazy_with(options.clone());
      // Without it every call takes the async path, which works as well, only slower.
      let direct = Direct::open(options.get_filename(), direct_statements(&sql)).ok();
      (writer, reader, direct)
    };

    Ok(Self {
      writer,
      reader,
      shared: in_memory,
      direct,
      sql,
      label: label.to_owned(),
    })
  }

  pub async fn get(&self, sid: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    let row = sqlx::query(&self.sql.get)
      .bind(sid)
      .bind(seconds(now))
      .fetch_optional(&self.reader)
      .await
      .map_err(|error| self.fail("get", error))?;

    row
      .map(|row| {
        row
          .try_get_unchecked::<String, _>(0)
          .map_err(|error| self.fail("get", error))
      })
      .transpose()
  }

  pub async fn set(&self, sid: &str, sess: &str, expires: DateTime<Utc>) -> Result<()> {
    sqlx::query(&self.sql.set)
      .bind(sid)
      .bind(sess)
      .bind(iso(expires))
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("set", error))?;
    Ok(())
  }

  pub async fn touch(&self, sid: &str, expires: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(&self.sql.touch)
      .bind(sid)
      .bind(iso(expires))
      .bind(seconds(now))
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("touch", error))?;
    Ok(done.rows_affected())
  }

  pub async fn destroy(&self, sid: &str) -> Result<u64> {
    let done = sqlx::query(&self.sql.destroy)
      .bind(sid)
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("destroy", error))?;
    Ok(done.rows_affected())
  }

  pub async fn clear(&self) -> Result<u64> {
    let done = sqlx::query(&self.sql.clear)
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("clear", error))?;
    Ok(done.rows_affected())
  }

  pub async fn length(&self, now: DateTime<Utc>) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(&self.sql.length)
      .bind(seconds(now))
      .fetch_one(&self.reader)
      .await
      .map_err(|error| self.fail("length", error))?;
    Ok(u64::try_from(count).unwrap_or(0))
  }

  pub async fn all(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
    let rows = sqlx::query(&self.sql.all)
      .bind(seconds(now))
      .fetch_all(&self.reader)
      .await
      .map_err(|error| self.fail("all", error))?;
    rows
      .iter()
      .map(|row| {
        row
          .try_get_unchecked::<String, _>(0)
          .map_err(|error| self.fail("all", error))
      })
      .collect()
  }

  pub async fn delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
    // Any row that expired before `now`, in either text form, sorts before the ISO text of a
    // day later, so the first bound lets the expiry index narrow the scan.
    let bound = iso(now + chrono::Duration::days(1));
    let done = sqlx::query(&self.sql.delete_expired)
      .bind(bound)
      .bind(seconds(now))
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("cleanup", error))?;
    Ok(done.rows_affected())
  }

  /// Runs the writes in one transaction: one commit, and one sync of the WAL, for all.
  pub async fn write_batch(
    &self,
    writes: &[PendingWrite],
    now: DateTime<Utc>,
  ) -> Result<Option<Vec<u64>>> {
    let fail = |error| self.fail("set", error);
    let mut tx = self.writer.begin().await.map_err(fail)?;
    let mut counts = Vec::with_capacity(writes.len());
    for write in writes {
      let done = match &write.op {
        WriteOp::Set { sess, expires } => sqlx::query(&self.sql.set)
          .bind(&write.sid)
          .bind(sess)
          .bind(iso(*expires)),
        WriteOp::Touch { expires } => sqlx::query(&self.sql.touch)
          .bind(&write.sid)
          .bind(iso(*expires))
          .bind(seconds(now)),
        WriteOp::Destroy => sqlx::query(&self.sql.destroy).bind(&write.sid),
      }
      .execute(&mut *tx)
      .await
      .map_err(fail)?;
      counts.push(done.rows_affected());
    }
    tx.commit().await.map_err(fail)?;
    Ok(Some(counts))
  }

  pub fn pool_stats(&self) -> PoolStats {
    let mut stats = PoolStats::of(&self.writer);
    if !self.shared {
      stats.add(PoolStats::of(&self.reader));
    }
    stats
  }

  /// Returns the connection for calls on the JS thread, if the database has one.
  pub fn direct(&self) -> Option<&Direct> {
    self.direct.as_ref()
  }

  /// Copies the WAL written by the direct connection into the file, on the async writer.
  /// With `restart` (RESTART) it holds the write lock until the copy is done and readers have
  /// left the WAL, so the next write starts the WAL over. Without it (PASSIVE) it copies what
  /// it can beside ongoing writes. Passive checkpoints alone never got that far under steady
  /// writes, and the WAL grew without bound.
  pub async fn checkpoint(&self, restart: bool) -> Result<()> {
    let sql = if restart {
      "PRAGMA wal_checkpoint(RESTART)"
    } else {
      "PRAGMA wal_checkpoint(PASSIVE)"
    };
    sqlx::query(sql)
      .execute(&self.writer)
      .await
      .map_err(|error| self.fail("checkpoint", error))?;
    Ok(())
  }

  pub async fn close(&self) {
    if let Some(direct) = &self.direct {
      direct.close();
    }
    self.reader.close().await;
    self.writer.close().await;
  }

  fn fail(&self, operation: &'static str, error: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(operation, &self.label, error)
  }
}

/// Opens a connection, waiting while another connection holds the lock that switching a new
/// file to WAL mode needs: SQLite returns SQLITE_BUSY at once there instead of calling the busy
/// handler.
async fn connect_when_unlocked(options: &SqliteConnectOptions) -> sqlx::Result<SqliteConnection> {
  let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
  loop {
    match options.connect().await {
      Err(error) if is_busy(&error) && tokio::time::Instant::now() < deadline => {
        tokio::time::sleep(Duration::from_millis(20)).await;
      }
      result => return result,
    }
  }
}

/// Tells whether SQLite reported SQLITE_BUSY (5) or SQLITE_LOCKED (6).
fn is_busy(error: &sqlx::Error) -> bool {
  error
    .as_database_error()
    .and_then(|db| db.code())
    .is_some_and(|code| is_lock_code(&code))
}

/// Tells whether an SQLite result code is SQLITE_BUSY or SQLITE_LOCKED, or one of their
/// extended codes (the low byte of an extended code is its primary code).
pub(super) fn is_lock_code(code: &str) -> bool {
  code
    .parse::<i32>()
    .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Errors of the setup steps, kept apart so driver errors get the right operation name.
enum Setup {
  Sql(sqlx::Error),
  Store(StoreError),
}

async fn ensure_table(
  conn: &mut SqliteConnection,
  names: &TableNames,
  create: bool,
) -> std::result::Result<(), Setup> {
  let table = names.quoted_table(Quote::Double);
  let sid = names.quoted_sid(Quote::Double);
  if create {
    let ddl = format!(
      "CREATE TABLE IF NOT EXISTS {table} ({sid} varchar(255) NOT NULL PRIMARY KEY, \
       \"sess\" json NOT NULL, \"expired\" datetime NOT NULL)"
    );
    sqlx::query(&ddl)
      .execute(&mut *conn)
      .await
      .map_err(Setup::Sql)?;
    let index = names.quoted_index(Quote::Double);
    let ddl = format!("CREATE INDEX IF NOT EXISTS {index} ON {table} (\"expired\")");
    sqlx::query(&ddl)
      .execute(&mut *conn)
      .await
      .map_err(Setup::Sql)?;
  }

  let columns: Vec<(String, String)> =
    sqlx::query_as("SELECT name, type FROM pragma_table_info(?1)")
      .bind(&names.table)
      .fetch_all(&mut *conn)
      .await
      .map_err(Setup::Sql)?;
  if columns.is_empty() {
    return Err(Setup::Store(StoreError::TableMissing {
      table: names.display(),
      target: "the SQLite database".into(),
    }));
  }
  check_columns(names, &columns).map_err(Setup::Store)
}

pub(super) fn statements(names: &TableNames) -> Statements {
  let table = names.quoted_table(Quote::Double);
  let sid = names.quoted_sid(Quote::Double);
  let live = "unixepoch(\"expired\", 'subsec') >= ?";
  Statements {
    get: format!("SELECT \"sess\" FROM {table} WHERE {sid} = ?1 AND {live}2"),
    set: format!(
      "INSERT INTO {table} ({sid}, \"sess\", \"expired\") VALUES (?1, ?2, ?3) \
       ON CONFLICT ({sid}) DO UPDATE SET \"sess\" = excluded.\"sess\", \
       \"expired\" = excluded.\"expired\""
    ),
    touch: format!("UPDATE {table} SET \"expired\" = ?2 WHERE {sid} = ?1 AND {live}3"),
    destroy: format!("DELETE FROM {table} WHERE {sid} = ?1"),
    clear: format!("DELETE FROM {table}"),
    length: format!("SELECT count(*) FROM {table} WHERE {live}1"),
    all: format!("SELECT \"sess\" FROM {table} WHERE {live}1"),
    delete_expired: format!(
      "DELETE FROM {table} WHERE {sid} IN (SELECT {sid} FROM {table} \
       WHERE \"expired\" < ?1 AND unixepoch(\"expired\", 'subsec') < ?2 LIMIT {CLEANUP_BATCH})"
    ),
  }
}

/// Copies the statements the direct connection runs.
pub(super) fn direct_statements(sql: &Statements) -> DirectStatements {
  DirectStatements {
    get: sql.get.clone(),
    set: sql.set.clone(),
    touch: sql.touch.clone(),
    destroy: sql.destroy.clone(),
  }
}

/// Names the file in errors of opening it, which are mostly a missing folder or no permission.
fn open_error(label: &str, error: sqlx::Error) -> StoreError {
  StoreError::OpenFile {
    target: label.to_owned(),
    source: error,
  }
}
