//! MySQL and MariaDB: `sess` is `JSON` (a checked `LONGTEXT` on MariaDB) and `expired` is
//! `DATETIME(3)` holding UTC. sqlx runs `SET time_zone='+00:00'` on every connection. Instants
//! are bound as naive UTC DATETIME values: sqlx sends a `DateTime<Utc>` as a TIMESTAMP, which
//! MariaDB turns into NULL outside 1970-2038.
//!
//! Sids are compared byte for byte: new tables use a binary no-pad collation, and every lookup
//! adds a `CAST(... AS BINARY)` test, because tables made by older stores often use a
//! case-insensitive collation that pads trailing spaces.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlRow};
use sqlx::{ConnectOptions, Connection, MySqlConnection, Row};

use super::{
  check_columns, runs, Liveness, PendingWrite, PoolStats, Settings, Statements, WriteOp,
  CLEANUP_BATCH,
};
use crate::error::{Result, StoreError};
use crate::schema::{Quote, TableNames};

/// InnoDB error number after which the same statement may simply run again.
const DEADLOCK: u16 = 1213;
/// "Column cannot be null": raised on purpose by the guarded upsert of `statements`.
const COLUMN_NULL: u16 = 1048;

pub struct Mysql {
  pool: MySqlPool,
  sql: Statements,
  liveness: Liveness,
  /// Multi-row statements by kind and row count, built on first use.
  batch_sql: Mutex<HashMap<(Batch, usize), Arc<str>>>,
  /// The upsert's `ON DUPLICATE KEY UPDATE` clause, shared by single and multi-row forms.
  on_duplicate: String,
  table: String,
  sid: String,
  /// True when the upsert carries the sid-collision guard of `on_duplicate`.
  sid_guarded: bool,
  /// True on MariaDB, whose `DELETE ... RETURNING` gives each destroy of a batch its count.
  /// MySQL 8 has no `RETURNING`, so a batch there runs in a transaction and counts the total.
  delete_returning: bool,
  label: String,
}

/// The kinds of multi-row statement.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Batch {
  Get,
  Set,
  Touch,
  Destroy,
  DeleteReturning,
}

impl Mysql {
  pub async fn open(
    options: &MySqlConnectOptions,
    label: &str,
    names: TableNames,
    settings: &Settings,
  ) -> Result<Self> {
    let fail = |operation, error| StoreError::from_sqlx(operation, label, error);
    let pool = settings.pool;
    let connect = tokio::time::timeout(pool.acquire(), options.connect());
    let mut conn = match connect.await {
      Ok(conn) => conn.map_err(|error| connect_error(label, error))?,
      Err(_) => {
        return Err(StoreError::PoolTimeout {
          target: label.to_owned(),
        })
      }
    };

    let version: String = sqlx::query_scalar("SELECT VERSION()")
      .fetch_one(&mut conn)
      .await
      .map_err(|error| fail("reading the server version", error))?;
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    if settings.create_table {
      create_table(&mut conn, &names, &version, mariadb)
        .await
        .map_err(|error| fail("creating the table", error))?;
    }
    let columns = columns(&mut conn, &names)
      .await
      .map_err(|error| fail("reading the table layout", error))?;
    if columns.is_empty() {
      return Err(StoreError::TableMissing {
        table: names.display(),
        target: label.to_owned(),
      });
    }
    check_columns(&names, &columns)?;
    let exact = sid_is_exact(&mut conn, &names)
      .await
      .map_err(|error| fail("reading the table layout", error))?;
    conn.close().await.map_err(|error| fail("setup", error))?;

    let liveness = Liveness::default();
    let session: Arc<str> = session_settings(settings, mariadb).into();
    let pool = liveness
      .pool_options()
      .max_connections(pool.max.unwrap_or(10).max(1))
      .min_connections(pool.min.unwrap_or(0))
      .acquire_timeout(pool.acquire())
      .idle_timeout(pool.idle())
      .after_connect(move |conn, _| {
        let session = Arc::clone(&session);
        Box::pin(async move { sqlx::query(&session).execute(conn).await.map(|_| ()) })
      })
      .connect_lazy_with(options.clone());
    Ok(Self {
      pool,
      liveness,
      sql: statements(&names, exact),
      batch_sql: Mutex::new(HashMap::new()),
      on_duplicate: on_duplicate(&names, exact),
      table: names.quoted_table(Quote::Backtick),
      sid: names.quoted_sid(Quote::Backtick),
      sid_guarded: !exact,
      delete_returning: mariadb,
      label: label.to_owned(),
    })
  }

  pub async fn get(&self, sid: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    let row = sqlx::query(&self.sql.get)
      .bind(sid)
      .bind(sid)
      .bind(now.naive_utc())
      .fetch_optional(&self.pool)
      .await
      .map_err(|error| self.fail("get", error))?;
    row.map(|row| self.sess_of(&row, sid, 0)).transpose()
  }

  /// Looks several sids up with one query; the result is in the order of `sids`. Rows are
  /// matched to sids byte for byte, as `get` compares them.
  pub async fn get_many(&self, sids: &[String], now: DateTime<Utc>) -> Result<Vec<Option<String>>> {
    let sql = self.batch_sql(Batch::Get, sids.len());
    let mut query = sqlx::query(&sql);
    for sid in sids {
      query = query.bind(sid);
    }
    let rows = query
      .bind(now.naive_utc())
      .fetch_all(&self.pool)
      .await
      .map_err(|error| self.fail("get", error))?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
      let sid: Vec<u8> = row
        .try_get_unchecked(0)
        .map_err(|error| self.fail("reading a session", error))?;
      let Ok(sid) = String::from_utf8(sid) else {
        continue;
      };
      let sess = self.sess_of(row, &sid, 1)?;
      found.push((sid, sess));
    }
    Ok(super::in_order(sids, found))
  }

  pub async fn set(&self, sid: &str, sess: &str, expires: DateTime<Utc>) -> Result<()> {
    let mut retried = false;
    loop {
      let result = sqlx::query(&self.sql.set)
        .bind(sid)
        .bind(sess)
        .bind(expires.naive_utc())
        .execute(&self.pool)
        .await;
      match result {
        Ok(_) => return Ok(()),
        // The upsert is idempotent, so one rerun after a deadlock between first writes of
        // the same sid is safe.
        Err(error) if !retried && is_retryable(&error) => retried = true,
        Err(error) if self.sid_guarded && error_number(&error) == Some(COLUMN_NULL) => {
          return Err(StoreError::SidConflict {
            sid: crate::store::short_sid(sid),
          })
        }
        Err(error) => return Err(self.fail("set", error)),
      }
    }
  }

  pub async fn touch(&self, sid: &str, expires: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(&self.sql.touch)
      .bind(expires.naive_utc())
      .bind(sid)
      .bind(sid)
      .bind(now.naive_utc())
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("touch", error))?;
    Ok(done.rows_affected())
  }

  pub async fn destroy(&self, sid: &str) -> Result<u64> {
    let done = sqlx::query(&self.sql.destroy)
      .bind(sid)
      .bind(sid)
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("destroy", error))?;
    Ok(done.rows_affected())
  }

  pub async fn clear(&self) -> Result<u64> {
    let done = sqlx::query(&self.sql.clear)
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("clear", error))?;
    Ok(done.rows_affected())
  }

  pub async fn length(&self, now: DateTime<Utc>) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(&self.sql.length)
      .bind(now.naive_utc())
      .fetch_one(&self.pool)
      .await
      .map_err(|error| self.fail("length", error))?;
    Ok(u64::try_from(count).unwrap_or(0))
  }

  pub async fn all(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
    let rows = sqlx::query(&self.sql.all)
      .bind(now.naive_utc())
      .fetch_all(&self.pool)
      .await
      .map_err(|error| self.fail("all", error))?;
    rows.iter().map(|row| self.sess_of(row, "", 0)).collect()
  }

  pub async fn delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(&self.sql.delete_expired)
      .bind(now.naive_utc())
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("cleanup", error))?;
    Ok(done.rows_affected())
  }

  /// Runs the writes in one transaction, each run of one kind as one multi-row statement.
  /// Returns `None` when a run's total does not give each write's count (some of its sids
  /// matched, some did not). The transaction is then rolled back, and the caller runs the
  /// writes one by one.
  pub async fn write_batch(
    &self,
    writes: &[PendingWrite],
    now: DateTime<Utc>,
  ) -> Result<Option<Vec<u64>>> {
    let fail = |error| self.fail("set", error);
    let runs = runs(writes);
    // One multi-row upsert or `DELETE ... RETURNING` commits atomically by itself, and a
    // transaction would add two round trips.
    if let [run] = runs.as_slice() {
      match writes[0].op {
        WriteOp::Set { .. } => {
          self
            .set_run(&self.pool, &writes[run.clone()])
            .await
            .map_err(fail)?;
          return Ok(Some(vec![1; writes.len()]));
        }
        WriteOp::Destroy if self.delete_returning => {
          let counts = self
            .destroy_run(&self.pool, &writes[run.clone()])
            .await
            .map_err(fail)?;
          return Ok(Some(counts));
        }
        // Running a touch again sets the same expiry and matches the same rows. So when the total
        // does not give each touch its count, the touches run again one by one to get them.
        WriteOp::Touch { .. } => {
          let changed = self
            .change_run(&self.pool, &writes[run.clone()], now)
            .await
            .map_err(fail)?;
          return Ok(whole_counts(changed, writes.len()));
        }
        WriteOp::Destroy => {}
      }
    }
    let mut tx = self.pool.begin().await.map_err(fail)?;
    let mut counts = Vec::with_capacity(writes.len());
    for run in runs {
      let run = &writes[run];
      if run.len() > 1 {
        if matches!(run[0].op, WriteOp::Set { .. }) {
          self.set_run(&mut *tx, run).await.map_err(fail)?;
          counts.extend(std::iter::repeat_n(1, run.len()));
          continue;
        }
        if matches!(run[0].op, WriteOp::Destroy) && self.delete_returning {
          counts.extend(self.destroy_run(&mut *tx, run).await.map_err(fail)?);
          continue;
        }
        let changed = self.change_run(&mut *tx, run, now).await.map_err(fail)?;
        if let Some(run_counts) = whole_counts(changed, run.len()) {
          counts.extend(run_counts);
        } else {
          tx.rollback().await.map_err(fail)?;
          return Ok(None);
        }
        continue;
      }
      let write = &run[0];
      let done = match &write.op {
        WriteOp::Set { sess, expires } => sqlx::query(&self.sql.set)
          .bind(&write.sid)
          .bind(sess)
          .bind(expires.naive_utc()),
        WriteOp::Touch { expires } => sqlx::query(&self.sql.touch)
          .bind(expires.naive_utc())
          .bind(&write.sid)
          .bind(&write.sid)
          .bind(now.naive_utc()),
        WriteOp::Destroy => sqlx::query(&self.sql.destroy)
          .bind(&write.sid)
          .bind(&write.sid),
      }
      .execute(&mut *tx)
      .await
      .map_err(fail)?;
      counts.push(done.rows_affected());
    }
    tx.commit().await.map_err(fail)?;
    Ok(Some(counts))
  }

  /// Touches or destroys a run of distinct sids in one statement; returns the rows changed.
  async fn change_run<'c, E>(
    &self,
    executor: E,
    run: &[PendingWrite],
    now: DateTime<Utc>,
  ) -> sqlx::Result<u64>
  where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
  {
    let touch = matches!(run[0].op, WriteOp::Touch { .. });
    let kind = if touch { Batch::Touch } else { Batch::Destroy };
    let sql = self.batch_sql(kind, run.len());
    let mut query = sqlx::query(&sql);
    if touch {
      for write in run {
        if let WriteOp::Touch { expires } = &write.op {
          query = query.bind(&write.sid).bind(expires.naive_utc());
        }
      }
    }
    for write in run {
      query = query.bind(&write.sid);
    }
    for write in run {
      query = query.bind(&write.sid);
    }
    if touch {
      query = query.bind(now.naive_utc());
    }
    Ok(query.execute(executor).await?.rows_affected())
  }

  /// Deletes a run of distinct sids with one `DELETE ... RETURNING` (MariaDB only) and returns
  /// each write's count.
  async fn destroy_run<'c, E>(&self, executor: E, run: &[PendingWrite]) -> sqlx::Result<Vec<u64>>
  where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
  {
    let sql = self.batch_sql(Batch::DeleteReturning, run.len());
    let mut query = sqlx::query(&sql);
    for write in run.iter().chain(run) {
      query = query.bind(&write.sid);
    }
    let rows = query.fetch_all(executor).await?;
    // The binary comparison of the statement deleted exact sids only, so the returned sids
    // are byte for byte those of the writes.
    let mut deleted = Vec::with_capacity(rows.len());
    for row in &rows {
      deleted.push(row.try_get_unchecked::<Vec<u8>, _>(0)?);
    }
    Ok(
      run
        .iter()
        .map(|write| u64::from(deleted.iter().any(|sid| sid == write.sid.as_bytes())))
        .collect(),
    )
  }

  /// Upserts a run of sets with distinct sids in one statement.
  async fn set_run<'c, E>(&self, executor: E, run: &[PendingWrite]) -> sqlx::Result<()>
  where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
  {
    let sql = self.batch_sql(Batch::Set, run.len());
    let mut query = sqlx::query(&sql);
    for write in run {
      if let WriteOp::Set { sess, expires } = &write.op {
        query = query.bind(&write.sid).bind(sess).bind(expires.naive_utc());
      }
    }
    query.execute(executor).await?;
    Ok(())
  }

  /// Returns the multi-row statement of `kind` for `rows` rows, building it once per kind and
  /// row count.
  fn batch_sql(&self, kind: Batch, rows: usize) -> Arc<str> {
    let mut cache = self
      .batch_sql
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sql = cache.entry((kind, rows)).or_insert_with(|| {
      let (table, sid) = (&self.table, &self.sid);
      let list = vec!["?"; rows].join(", ");
      // The IN list uses the primary key, and the binary comparison keeps sids exact under a
      // case-insensitive collation, as the single-row forms do.
      let binary = vec!["CAST(? AS BINARY)"; rows].join(", ");
      let exact = format!("{sid} IN ({list}) AND CAST({sid} AS BINARY) IN ({binary})");
      match kind {
        Batch::Get => {
          format!("SELECT {sid}, `sess` FROM {table} WHERE {sid} IN ({list}) AND `expired` >= ?")
        }
        Batch::Set => {
          let values = vec!["(?, ?, ?)"; rows].join(", ");
          format!(
            "INSERT INTO {table} ({sid}, `sess`, `expired`) VALUES {values} {}",
            self.on_duplicate
          )
        }
        Batch::Touch => {
          let cases = "WHEN CAST(? AS BINARY) THEN ? ".repeat(rows);
          format!(
            "UPDATE {table} SET `expired` = CASE CAST({sid} AS BINARY) {cases}END \
             WHERE {exact} AND `expired` >= ?"
          )
        }
        Batch::Destroy => format!("DELETE FROM {table} WHERE {exact}"),
        Batch::DeleteReturning => format!("DELETE FROM {table} WHERE {exact} RETURNING {sid}"),
      }
      .into()
    });
    Arc::clone(sql)
  }

  pub fn pool_stats(&self) -> PoolStats {
    PoolStats::of(&self.pool)
  }

  pub async fn close(&self) {
    self.pool.close().await;
  }

  /// Decodes `sess` as bytes: MariaDB reports its JSON type as a binary LONGTEXT and MySQL 8
  /// as JSON, which the checked text decoder rejects.
  fn sess_of(&self, row: &MySqlRow, sid: &str, column: usize) -> Result<String> {
    let bytes: Vec<u8> = row
      .try_get_unchecked(column)
      .map_err(|error| self.fail("reading a session", error))?;
    String::from_utf8(bytes).map_err(|_| StoreError::CorruptRow {
      sid: crate::store::short_sid(sid),
      reason: "sess is not valid UTF-8".into(),
    })
  }

  fn fail(&self, operation: &'static str, error: sqlx::Error) -> StoreError {
    let error = StoreError::from_sqlx(operation, &self.label, error);
    self.liveness.note(&error);
    error
  }
}

fn is_retryable(error: &sqlx::Error) -> bool {
  error_number(error) == Some(DEADLOCK)
}

/// Returns the `SET` every pooled connection runs.
///
/// Strict mode makes an over-long sid or a NULL an error instead of a silent change. The lock
/// wait limit (whole seconds, at least 1) and MariaDB's `max_statement_time` make the server end
/// a statement that a call gave up on, so it never keeps its connection busy there. MySQL 8
/// has no such limit for writes, only `max_execution_time` for `SELECT`.
fn session_settings(settings: &Settings, mariadb: bool) -> String {
  let lock_seconds = super::lock_timeout(settings.query_timeout)
    .as_millis()
    .div_ceil(1000)
    .max(1);
  let statement = if mariadb {
    format!(
      "SESSION max_statement_time = {:.3}",
      settings.query_timeout.as_secs_f64()
    )
  } else {
    format!(
      "SESSION max_execution_time = {}",
      settings.query_timeout.as_millis()
    )
  };
  format!(
    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), \
     SESSION innodb_lock_wait_timeout = {lock_seconds}, {statement}"
  )
}

fn error_number(error: &sqlx::Error) -> Option<u16> {
  let db = error.as_database_error()?;
  let mysql = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
  Some(mysql.number())
}

/// Tells whether the sid column compares byte for byte: a binary type, or a binary collation
/// that does not pad trailing spaces.
async fn sid_is_exact(conn: &mut MySqlConnection, names: &TableNames) -> sqlx::Result<bool> {
  let row = sqlx::query(
    "SELECT CAST(DATA_TYPE AS CHAR), CAST(COALESCE(COLLATION_NAME, '') AS CHAR) \
     FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
  )
  .bind(&names.table)
  .bind(&names.sid_column)
  .fetch_one(conn)
  .await?;
  let data_type: String = row.try_get_unchecked(0)?;
  let collation: String = row.try_get_unchecked(1)?;
  let binary_type = matches!(
    data_type.to_ascii_lowercase().as_str(),
    "varbinary" | "binary"
  );
  Ok(binary_type || collation.contains("nopad_bin") || collation.ends_with("0900_bin"))
}

/// Returns each write's count from the total a run of `len` touches or destroys changed. Each
/// sid matches at most one row, so only a total of 0 or of `len` gives every count.
fn whole_counts(changed: u64, len: usize) -> Option<Vec<u64>> {
  if changed == 0 {
    Some(vec![0; len])
  } else if usize::try_from(changed) == Ok(len) {
    Some(vec![1; len])
  } else {
    None
  }
}

async fn create_table(
  conn: &mut MySqlConnection,
  names: &TableNames,
  version: &str,
  mariadb: bool,
) -> sqlx::Result<()> {
  // Binary no-pad collations: `a` and `A`, and `a` and `a `, are different sids.
  let collation = if mariadb {
    "utf8mb4_nopad_bin"
  } else if version.starts_with('5') {
    "utf8mb4_bin"
  } else {
    "utf8mb4_0900_bin"
  };
  // MariaDB's JSON is LONGTEXT with a json_valid() check, and that check rejects what
  // JSON.stringify may produce: nesting deeper than 32 levels, and lone surrogates.
  let sess_type = if mariadb {
    "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  } else {
    "JSON"
  };
  let table = names.quoted_table(Quote::Backtick);
  let sid = names.quoted_sid(Quote::Backtick);
  let index = names.quoted_index(Quote::Backtick);
  let ddl = format!(
    "CREATE TABLE IF NOT EXISTS {table} (\
     {sid} VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL, \
     `sess` {sess_type} NOT NULL, `expired` DATETIME(3) NOT NULL, \
     PRIMARY KEY ({sid}), INDEX {index} (`expired`)) DEFAULT CHARACTER SET utf8mb4"
  );
  sqlx::query(&ddl).execute(conn).await?;
  Ok(())
}

async fn columns(
  conn: &mut MySqlConnection,
  names: &TableNames,
) -> sqlx::Result<Vec<(String, String)>> {
  let rows = sqlx::query(
    "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
  )
  .bind(&names.table)
  .fetch_all(conn)
  .await?;
  rows
    .iter()
    .map(|row| Ok((row.try_get_unchecked(0)?, row.try_get_unchecked(1)?)))
    .collect()
}

fn statements(names: &TableNames, sid_is_exact: bool) -> Statements {
  let table = names.quoted_table(Quote::Backtick);
  let sid = names.quoted_sid(Quote::Backtick);
  let exact = format!("{sid} = ? AND CAST({sid} AS BINARY) = CAST(? AS BINARY)");
  Statements {
    get: format!("SELECT `sess` FROM {table} WHERE {exact} AND `expired` >= ?"),
    // NOTE: VALUES() in ON DUPLICATE KEY UPDATE is deprecated since MySQL 8.0.20 but still
    // works. MariaDB does not understand the row-alias form that replaces it.
    set: format!(
      "INSERT INTO {table} ({sid}, `sess`, `expired`) VALUES (?, ?, ?) {}",
      on_duplicate(names, sid_is_exact)
    ),
    touch: format!("UPDATE {table} SET `expired` = ? WHERE {exact} AND `expired` >= ?"),
    destroy: format!("DELETE FROM {table} WHERE {exact}"),
    clear: format!("DELETE FROM {table}"),
    length: format!("SELECT count(*) FROM {table} WHERE `expired` >= ?"),
    all: format!("SELECT `sess` FROM {table} WHERE `expired` >= ?"),
    delete_expired: format!("DELETE FROM {table} WHERE `expired` < ? LIMIT {CLEANUP_BATCH}"),
  }
}

/// Returns the update clause of the upsert.
fn on_duplicate(names: &TableNames, sid_is_exact: bool) -> String {
  let sid = names.quoted_sid(Quote::Backtick);
  // Under a case-insensitive or padding collation the primary key can match another sid
  // (`abc` for `ABC`). Setting that row's sid to NULL then fails the statement under strict
  // mode, so one session never overwrites another.
  let guard = if sid_is_exact {
    String::new()
  } else {
    format!("{sid} = IF(CAST({sid} AS BINARY) = CAST(VALUES({sid}) AS BINARY), {sid}, NULL), ")
  };
  format!("ON DUPLICATE KEY UPDATE {guard}`sess` = VALUES(`sess`), `expired` = VALUES(`expired`)")
}

fn connect_error(label: &str, error: sqlx::Error) -> StoreError {
  StoreError::Connect {
    target: label.to_owned(),
    source: error,
  }
}
