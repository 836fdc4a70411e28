//! SQLite calls run on the caller's thread, without a hop to a worker thread.
//!
//! A `get` on a SQLite file takes a few microseconds, while handing it to Tokio, then to sqlx's
//! connection thread and back took about 140 (p50, measured on a two-core machine). So `get`,
//! `set`, `touch` and `destroy` first try this connection, on the JS thread, as better-sqlite3
//! does. It never waits, because its busy timeout is zero. When another connection holds the
//! write lock (a batch of the async writer, another process), the call returns `None` and the
//! caller takes the async path, which waits for the lock there. Any other failure does the same, so
//! the async path alone reports errors, with their codes.
//!
//! The connection never checkpoints on its own, because a checkpoint syncs the file and would
//! block the JS thread for milliseconds. `Direct::write` returns a flag when one is due, and the
//! caller runs it on the async writer.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{PendingWrite, WriteOp};

/// Commits after which the WAL is checkpointed: about 1,000 WAL pages (SQLite's default
/// threshold) at an estimated three pages a write.
const CHECKPOINT_EVERY: u32 = 330;

/// The SQL this connection runs, the same text the async pools run.
pub struct DirectStatements {
  pub get: String,
  pub set: String,
  pub touch: String,
  pub destroy: String,
}

pub struct Direct {
  /// `None` once closed. Only the JS thread uses it, so the lock is never contended but by
  /// `close`.
  conn: Mutex<Option<Connection>>,
  sql: DirectStatements,
  commits: AtomicU32,
}

impl Direct {
  /// Opens a second connection to a file whose table was already checked.
  pub fn open(path: &Path, sql: DirectStatements) -> rusqlite::Result<Self> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    // The file is in WAL mode already. NORMAL gives the durability of the async pools.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")?;
    Ok(Self {
      conn: Mutex::new(Some(conn)),
      sql,
      commits: AtomicU32::new(0),
    })
  }

  /// Returns the stored JSON of a live session, `Some(None)` when there is none, or `None`
  /// when the async path must run the call.
  pub fn get(&self, sid: &str, now: DateTime<Utc>) -> Option<Option<String>> {
    let guard = self.conn.try_lock().ok()?;
    let conn = guard.as_ref()?;
    let mut statement = conn.prepare_cached(&self.sql.get).ok()?;
    let mut rows = statement.query((sid, seconds(now))).ok()?;
    let Some(row) = rows.next().ok()? else {
      return Some(None);
    };
    match row.get_ref(0).ok()? {
      // Numbers and blobs are left to the async path, which reads them as text.
      ValueRef::Text(text) => std::str::from_utf8(text)
        .ok()
        .map(|json| Some(json.to_owned())),
      _ => None,
    }
  }

  /// Commits one write and returns its row count and whether a checkpoint is due, or `None`
  /// when the async path must run it.
  pub fn write(&self, write: &PendingWrite, now: DateTime<Utc>) -> Option<(u64, bool)> {
    let guard = self.conn.try_lock().ok()?;
    let conn = guard.as_ref()?;
    let changed = match &write.op {
      WriteOp::Set { sess, expires } => conn
        .prepare_cached(&self.sql.set)
        .and_then(|mut statement| statement.execute((&write.sid, sess, iso(*expires)))),
      WriteOp::Touch { expires } => conn
        .prepare_cached(&self.sql.touch)
        .and_then(|mut statement| statement.execute((&write.sid, iso(*expires), seconds(now)))),
      WriteOp::Destroy => conn
        .prepare_cached(&self.sql.destroy)
        .and_then(|mut statement| statement.execute([&write.sid])),
    }
    .ok()?;
    let commits = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
    let due = commits.is_multiple_of(CHECKPOINT_EVERY);
    Some((u64::try_from(changed).unwrap_or(u64::MAX), due))
  }

  /// Closes the connection; later calls report `None`.
  pub fn close(&self) {
    let mut guard = self
      .conn
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner);
    guard.take();
  }
}

/// Returns the instant as knex writes it: `2030-01-02T03:04:05.678Z`.
pub fn iso(instant: DateTime<Utc>) -> String {
  instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Returns seconds since the epoch with milliseconds, as `unixepoch(..., 'subsec')` gives them.
pub fn seconds(instant: DateTime<Utc>) -> f64 {
  // Exact for every millisecond timestamp up to year 275760, the JS Date range.
  #[allow(clippy::cast_precision_loss)]
  let millis = instant.timestamp_millis() as f64;
  millis / 1000.0
}

#[cfg(test)]
mod tests {
  use super::*;

  fn statements() -> DirectStatements {
    let names = crate::schema::TableNames::new("s", "sid", false).expect("names");
    super::super::sqlite::direct_statements(&super::super::sqlite::statements(&names))
  }

  fn file() -> (std::path::PathBuf, Connection) {
    let path = std::env::temp_dir().join(format!(
      "csk-direct-{}-{}.sqlite",
      std::process::id(),
      Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let other = Connection::open(&path).expect("open");
    other
      .execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE s (sid varchar(255) PRIMARY KEY, \
         sess json NOT NULL, expired datetime NOT NULL);",
      )
      .expect("schema");
    (path, other)
  }

  fn set(sid: &str) -> PendingWrite {
    PendingWrite {
      sid: sid.into(),
      op: WriteOp::Set {
        sess: "{\"n\":1}".into(),
        expires: Utc::now() + chrono::Duration::minutes(5),
      },
    }
  }

  #[test]
  fn write_then_read_round_trips() {
    let (path, _other) = file();
    let direct = Direct::open(&path, statements()).expect("direct");
    assert_eq!(direct.write(&set("a"), Utc::now()).map(|(n, _)| n), Some(1));
    assert_eq!(direct.get("a", Utc::now()), Some(Some("{\"n\":1}".into())));
    assert_eq!(direct.get("b", Utc::now()), Some(None));
    let destroy = PendingWrite {
      sid: "a".into(),
      op: WriteOp::Destroy,
    };
    assert_eq!(direct.write(&destroy, Utc::now()).map(|(n, _)| n), Some(1));
    direct.close();
    assert_eq!(direct.get("a", Utc::now()), None);
    std::fs::remove_file(&path).ok();
  }

  #[test]
  fn write_yields_to_held_lock() {
    let (path, other) = file();
    let direct = Direct::open(&path, statements()).expect("direct");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    assert_eq!(direct.write(&set("a"), Utc::now()), None);
    // Readers are not blocked by a writer in WAL mode.
    assert_eq!(direct.get("a", Utc::now()), Some(None));
    other.execute_batch("COMMIT").expect("unlock");
    assert!(direct.write(&set("a"), Utc::now()).is_some());
    std::fs::remove_file(&path).ok();
  }
}
