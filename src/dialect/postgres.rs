//! PostgreSQL: `sess` is `json` (also `jsonb` or `text` in older tables) and `expired` is
//! `timestamptz`. sqlx sets `TimeZone=UTC` on every connection.

#![forbid(unsafe_code)]

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{
  check_columns, column_type, runs, Liveness, PendingWrite, PoolStats, Settings, Statements,
  WriteOp, CLEANUP_BATCH,
};
use crate::error::{Result, StoreError};
use crate::schema::{Quote, TableNames};

pub struct Postgres {
  pool: PgPool,
  sql: Statements,
  liveness: Liveness,
  batch: BatchStatements,
  /// True when the connections plan every statement for its parameters, so the multi-row
  /// statements can be prepared (see `BatchStatements`).
  custom_plans: bool,
  label: String,
}

/// `plan_cache_mode` appeared in PostgreSQL 12.
const PLAN_CACHE_MODE_SINCE: u32 = 120_000;

impl Postgres {
  pub async fn open(
    options: &PgConnectOptions,
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

    if settings.create_table {
      create_table(&mut conn, &names, false)
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
    if settings.create_table {
      create_table(&mut conn, &names, true)
        .await
        .map_err(|error| fail("creating the expiry index", error))?;
    }
    let expired_type = column_type(&columns, "expired");
    let zone =
      if expired_type.starts_with("timestamp") && expired_type.ends_with("without time zone") {
        Some(
          database_time_zone(&mut conn)
            .await
            .map_err(|error| fail("reading the time zone", error))?,
        )
      } else {
        None
      };
    let sess_type = column_type(&columns, "sess");
    let sql = statements(&names, &sess_type, zone.as_deref());
    let batch = batch_statements(&names, &sess_type, zone.as_deref());
    let custom_plans = conn
      .server_version_num()
      .is_some_and(|version| version >= PLAN_CACHE_MODE_SINCE);
    conn.close().await.map_err(|error| fail("setup", error))?;

    let liveness = Liveness::default();
    let session: std::sync::Arc<str> = session_settings(settings, custom_plans).into();
    let pool = liveness
      .pool_options()
      // Set per connection rather than as startup options, which PgBouncer rejects.
      .after_connect(move |conn, _| {
        let session = std::sync::Arc::clone(&session);
        Box::pin(async move { sqlx::query(&session).execute(conn).await.map(|_| ()) })
      })
      .max_connections(pool.max.unwrap_or(10).max(1))
      .min_connections(pool.min.unwrap_or(0))
      .acquire_timeout(pool.acquire())
      .idle_timeout(pool.idle())
      .connect_lazy_with(options.clone());
    Ok(Self {
      pool,
      liveness,
      sql,
      batch,
      custom_plans,
      label: label.to_owned(),
    })
  }

  pub async fn get(&self, sid: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    sqlx::query_scalar(&self.sql.get)
      .bind(sid)
      .bind(now)
      .fetch_optional(&self.pool)
      .await
      .map_err(|error| self.fail("get", error))
  }

  /// Looks several sids up with one query; the result is in the order of `sids`.
  pub async fn get_many(&self, sids: &[String], now: DateTime<Utc>) -> Result<Vec<Option<String>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(&self.batch.get)
      .persistent(self.custom_plans)
      .bind(sids)
      .bind(now)
      .fetch_all(&self.pool)
      .await
      .map_err(|error| self.fail("get", error))?;
    Ok(super::in_order(sids, rows))
  }

  pub async fn set(&self, sid: &str, sess: &str, expires: DateTime<Utc>) -> Result<()> {
    sqlx::query(&self.sql.set)
      .bind(sid)
      .bind(sess)
      .bind(expires)
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("set", error))?;
    Ok(())
  }

  pub async fn touch(&self, sid: &str, expires: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(&self.sql.touch)
      .bind(sid)
      .bind(expires)
      .bind(now)
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("touch", error))?;
    Ok(done.rows_affected())
  }

  pub async fn destroy(&self, sid: &str) -> Result<u64> {
    let done = sqlx::query(&self.sql.destroy)
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
      .bind(now)
      .fetch_one(&self.pool)
      .await
      .map_err(|error| self.fail("length", error))?;
    Ok(u64::try_from(count).unwrap_or(0))
  }

  pub async fn all(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
    sqlx::query_scalar(&self.sql.all)
      .bind(now)
      .fetch_all(&self.pool)
      .await
      .map_err(|error| self.fail("all", error))
  }

  /// Deletes expired rows. Unprepared, so each run is planned for the table as it is then.
  pub async fn delete_expired(&self, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(&self.sql.delete_expired)
      .persistent(false)
      .bind(now)
      .execute(&self.pool)
      .await
      .map_err(|error| self.fail("cleanup", error))?;
    Ok(done.rows_affected())
  }

  /// Runs the writes in one transaction, each run of sets, touches or destroys as one
  /// statement over arrays.
  pub async fn write_batch(
    &self,
    writes: &[PendingWrite],
    now: DateTime<Utc>,
  ) -> Result<Option<Vec<u64>>> {
    let fail = |error| self.fail("set", error);
    let runs = runs(writes);
    // One statement commits atomically by itself; a transaction would add two round trips.
    if let [run] = runs.as_slice() {
      return self
        .write_run(&self.pool, &writes[run.clone()], now)
        .await
        .map(Some)
        .map_err(fail);
    }
    let mut tx = self.pool.begin().await.map_err(fail)?;
    let mut counts = Vec::with_capacity(writes.len());
    for run in runs {
      counts.extend(
        self
          .write_run(&mut *tx, &writes[run], now)
          .await
          .map_err(fail)?,
      );
    }
    tx.commit().await.map_err(fail)?;
    Ok(Some(counts))
  }

  /// Runs one run of same-kind writes with distinct sids as one statement over arrays.
  async fn write_run<'c, E>(
    &self,
    executor: E,
    run: &[PendingWrite],
    now: DateTime<Utc>,
  ) -> sqlx::Result<Vec<u64>>
  where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
  {
    let sids: Vec<&str> = run.iter().map(|write| write.sid.as_str()).collect();
    let changed: Vec<String> = match &run[0].op {
      WriteOp::Set { .. } => {
        let mut sessions = Vec::with_capacity(run.len());
        let mut expiries = Vec::with_capacity(run.len());
        for write in run {
          if let WriteOp::Set { sess, expires } = &write.op {
            sessions.push(sess.as_str());
            expiries.push(*expires);
          }
        }
        sqlx::query(&self.batch.set)
          .bind(&sids)
          .bind(&sessions)
          .bind(&expiries)
          .execute(executor)
          .await?;
        return Ok(vec![1; run.len()]);
      }
      WriteOp::Touch { .. } => {
        let expiries: Vec<DateTime<Utc>> = run
          .iter()
          .filter_map(|write| match write.op {
            WriteOp::Touch { expires } => Some(expires),
            _ => None,
          })
          .collect();
        sqlx::query_scalar(&self.batch.touch)
          .persistent(self.custom_plans)
          .bind(&sids)
          .bind(&expiries)
          .bind(now)
          .fetch_all(executor)
          .await?
      }
      WriteOp::Destroy => {
        sqlx::query_scalar(&self.batch.destroy)
          .persistent(self.custom_plans)
          .bind(&sids)
          .fetch_all(executor)
          .await?
      }
    };
    // RETURNING lists the sids the statement changed; the others matched no live row.
    Ok(
      sids
        .iter()
        .map(|sid| u64::from(changed.iter().any(|c| c == sid)))
        .collect(),
    )
  }

  pub fn pool_stats(&self) -> PoolStats {
    PoolStats::of(&self.pool)
  }

  pub async fn close(&self) {
    self.pool.close().await;
  }

  fn fail(&self, operation: &'static str, error: sqlx::Error) -> StoreError {
    let error = StoreError::from_sqlx(operation, &self.label, error);
    self.liveness.note(&error);
    error
  }
}

/// Returns the statement every pooled connection runs first, one `set_config` per setting so
/// that it takes one round trip. The server ends a statement that outlives the query timeout,
/// or that waits for a row lock longer than `lock_timeout`, so a call that timed out never
/// keeps its connection busy on the server.
fn session_settings(settings: &Settings, custom_plans: bool) -> String {
  let millis = |limit: std::time::Duration| limit.as_millis().min(i32::MAX as u128);
  let statement = millis(settings.query_timeout);
  let lock = millis(super::lock_timeout(settings.query_timeout));
  let mut sql = format!(
    "SELECT set_config('statement_timeout', '{statement}', false), \
     set_config('lock_timeout', '{lock}', false)"
  );
  if custom_plans {
    sql.push_str(", set_config('plan_cache_mode', 'force_custom_plan', false)");
  }
  sql
}

/// Creates the table, or with `index_only` its expiry index, when missing. The index comes
/// after the column check, so a table without `expired` gets ERR_TABLE_UNUSABLE.
async fn create_table(
  conn: &mut PgConnection,
  names: &TableNames,
  index_only: bool,
) -> sqlx::Result<()> {
  let table = names.quoted_table(Quote::Double);
  let sid = names.quoted_sid(Quote::Double);
  let index = names.quoted_index(Quote::Double);
  let ddl = if index_only {
    format!("CREATE INDEX IF NOT EXISTS {index} ON {table} (\"expired\")")
  } else {
    format!(
      "CREATE TABLE IF NOT EXISTS {table} ({sid} varchar(255) NOT NULL PRIMARY KEY, \
       \"sess\" json NOT NULL, \"expired\" timestamptz NOT NULL)"
    )
  };
  match sqlx::query(&ddl).execute(&mut *conn).await {
    Err(error) if !lost_creation_race(&error) => Err(error),
    _ => Ok(()),
  }
}

/// Returns whether `error` reports that another connection created the object between the
/// `IF NOT EXISTS` check and the catalog insert. By timing, PostgreSQL raises a unique violation
/// on its catalog (23505), `relation ... already exists` (42P07) or `type ... already exists`
/// (42710). The column check that follows confirms that the table is there.
fn lost_creation_race(error: &sqlx::Error) -> bool {
  error
    .as_database_error()
    .and_then(|db| db.code())
    .is_some_and(|code| matches!(code.as_ref(), "23505" | "42P07" | "42710"))
}

/// Returns the columns of the table with their types, or nothing when the table is missing.
async fn columns(
  conn: &mut PgConnection,
  names: &TableNames,
) -> sqlx::Result<Vec<(String, String)>> {
  sqlx::query_as(
    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
  )
  .bind(names.quoted_table(Quote::Double))
  .fetch_all(conn)
  .await
}

/// Returns the time zone the database's own sessions use, which sqlx overrides with UTC at
/// connect: a `timestamp without time zone` column contains wall times of that zone.
async fn database_time_zone(conn: &mut PgConnection) -> sqlx::Result<String> {
  let configured: Option<String> = sqlx::query_scalar(
    "SELECT substring(setting FROM position('=' IN setting) + 1) \
     FROM pg_db_role_setting s, unnest(s.setconfig) AS setting \
     WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
     AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user)) \
     AND lower(setting) LIKE 'timezone=%' \
     ORDER BY s.setrole DESC, s.setdatabase DESC LIMIT 1",
  )
  .fetch_optional(&mut *conn)
  .await?;
  if let Some(zone) = configured {
    return Ok(zone);
  }
  // The server-wide setting from postgresql.conf; reading it needs pg_read_all_settings.
  // NOTE: without that right a naive column is read as UTC.
  let from_file: Option<String> = sqlx::query_scalar(
    "SELECT setting FROM pg_file_settings WHERE lower(name) = 'timezone' AND applied \
     ORDER BY seqno DESC LIMIT 1",
  )
  .fetch_optional(&mut *conn)
  .await
  .unwrap_or(None);
  Ok(from_file.unwrap_or_else(|| "UTC".to_owned()))
}

fn statements(names: &TableNames, sess_type: &str, naive_zone: Option<&str>) -> Statements {
  let table = names.quoted_table(Quote::Double);
  let sid = names.quoted_sid(Quote::Double);
  let sess_param = match sess_type {
    "jsonb" => "$2::jsonb",
    "json" => "$2::json",
    _ => "$2",
  };
  // Instants are bound as timestamptz; a naive column gets them as wall time of its zone.
  let at = |param: &str| match naive_zone {
    Some(zone) => format!(
      "({param}::timestamptz AT TIME ZONE '{}')",
      zone.replace('\'', "''")
    ),
    None => param.to_owned(),
  };
  let (p1, p2, p3) = (at("$1"), at("$2"), at("$3"));
  Statements {
    get: format!("SELECT \"sess\"::text FROM {table} WHERE {sid} = $1 AND \"expired\" >= {p2}"),
    set: format!(
      "INSERT INTO {table} ({sid}, \"sess\", \"expired\") VALUES ($1, {sess_param}, {p3}) \
       ON CONFLICT ({sid}) DO UPDATE SET \"sess\" = excluded.\"sess\", \
       \"expired\" = excluded.\"expired\""
    ),
    touch: format!(
      "UPDATE {table} SET \"expired\" = {p2} WHERE {sid} = $1 AND \"expired\" >= {p3}"
    ),
    destroy: format!("DELETE FROM {table} WHERE {sid} = $1"),
    clear: format!("DELETE FROM {table}"),
    length: format!("SELECT count(*) FROM {table} WHERE \"expired\" >= {p1}"),
    all: format!("SELECT \"sess\"::text FROM {table} WHERE \"expired\" >= {p1}"),
    delete_expired: format!(
      "DELETE FROM {table} WHERE {sid} IN (SELECT {sid} FROM {table} \
       WHERE \"expired\" < {p1} LIMIT {CLEANUP_BATCH}) AND \"expired\" < {p1}"
    ),
  }
}

/// Multi-row forms of get, set, touch and destroy, taking one array per column.
///
/// After five runs a prepared statement may switch to a cached generic plan (see
/// `plan_cache_mode` in the PostgreSQL manual), and one made while the table was nearly empty
/// scans the whole table once it has grown. So the connections set `plan_cache_mode` to
/// `force_custom_plan`, and before PostgreSQL 12, which lacks it, get, touch and destroy run
/// unprepared, which costs one more round trip per batch.
struct BatchStatements {
  get: String,
  set: String,
  touch: String,
  destroy: String,
}

fn batch_statements(
  names: &TableNames,
  sess_type: &str,
  naive_zone: Option<&str>,
) -> BatchStatements {
  let table = names.quoted_table(Quote::Double);
  let sid = names.quoted_sid(Quote::Double);
  let sess = match sess_type {
    "jsonb" => "v.sess::jsonb",
    "json" => "v.sess::json",
    _ => "v.sess",
  };
  let at = |value: &str| match naive_zone {
    Some(zone) => format!("({value} AT TIME ZONE '{}')", zone.replace('\'', "''")),
    None => value.to_owned(),
  };
  let (expires, now) = (at("v.expires"), at("$3::timestamptz"));
  BatchStatements {
    get: format!(
      "SELECT {sid}::text, \"sess\"::text FROM {table} \
       WHERE {sid} = ANY($1::text[]) AND \"expired\" >= {}",
      at("$2::timestamptz")
    ),
    set: format!(
      "INSERT INTO {table} ({sid}, \"sess\", \"expired\") \
       SELECT v.sid, {sess}, {expires} \
       FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS v(sid, sess, expires) \
       ON CONFLICT ({sid}) DO UPDATE SET \"sess\" = excluded.\"sess\", \
       \"expired\" = excluded.\"expired\""
    ),
    touch: format!(
      "UPDATE {table} AS t SET \"expired\" = {expires} \
       FROM unnest($1::text[], $2::timestamptz[]) AS v(sid, expires) \
       WHERE t.{sid} = v.sid AND t.\"expired\" >= {now} RETURNING t.{sid}::text"
    ),
    destroy: format!("DELETE FROM {table} WHERE {sid} = ANY($1::text[]) RETURNING {sid}::text"),
  }
}

fn connect_error(label: &str, error: sqlx::Error) -> StoreError {
  StoreError::Connect {
    target: label.to_owned(),
    source: error,
  }
}
