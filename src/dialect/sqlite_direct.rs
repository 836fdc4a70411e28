//! SQLite calls run on the caller's thread, without a hop to a worker thread.
//!
//! A `get` on a SQLite file takes a few microseconds, while handing it to Tokio, then to sqlx's
//! connection thread and back took about 140 (p50, measured on a two-core machine). So `get`,
//! `set`, `touch` and `destroy` first try these connections, on the JS thread, as better-sqlite3
//! does. They never wait for a lock, because their busy timeout is zero. When another
//! connection holds the write lock (a batch of the async writer, another process), the call
//! returns `None` and the caller takes the async path, which waits for the lock there. Any
//! other failure does the same, so the async path alone reports errors, with their codes.
//!
//! Writes join one transaction until the caller commits it at the end of its turn of the
//! event loop, so the writes of one turn cost one commit. Gets use a second connection and see
//! only committed sessions. Neither connection checkpoints on its own, because a checkpoint
//! syncs the file and would block the JS thread for milliseconds. `Direct::commit` returns a
//! flag when one is due, and the caller runs it on the async writer.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{PendingWrite, WriteOp};

/// Writes after which the WAL is checkpointed. Writes made during a checkpoint take the slower
/// async path. With a checkpoint every 330 writes (about SQLite's default of 1,000 pages), p99
/// latencies at 16 calls in flight were near 10 ms. At 2,000 they were 0.4-2.4 ms, with a WAL
/// of about 8 MB (measured on a two-core machine).
const CHECKPOINT_EVERY: u32 = 2000;

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
  conns: Mutex<Option<Connections>>,
  sql: DirectStatements,
  /// Writes since the store opened, for spacing checkpoints.
  writes: AtomicU32,
}

struct Connections {
  /// Runs the writes, in a transaction the caller commits at the end of its turn.
  writer: Connection,
  /// Runs the gets, outside that transaction, so they see only committed sessions.
  reader: Connection,
  batch: Batch,
}

/// The state of the writer's transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
  None,
  Open,
  /// SQLite rolled the transaction back after a failed statement, so the writes before it
  /// are undone; `commit` reports that, and no write joins until then.
  Lost,
}

impl Direct {
  /// Opens two more connections to a file whose table was already checked.
  pub fn open(path: &Path, sql: DirectStatements) -> rusqlite::Result<Self> {
    let open = || -> rusqlite::Result<Connection> {
      let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
      let conn = Connection::open_with_flags(path, flags)?;
      conn.busy_timeout(std::time::Duration::ZERO)?;
      // The file is in WAL mode already. NORMAL gives the durability of the async pools.
      conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = {};",
        super::sqlite::JOURNAL_SIZE_LIMIT
      ))?;
      Ok(conn)
    };
    let conns = Connections {
      writer: open()?,
      reader: open()?,
      batch: Batch::None,
    };
    Ok(Self {
      conns: Mutex::new(Some(conns)),
      sql,
      writes: AtomicU32::new(0),
    })
  }

  /// Returns the stored JSON of a live session, `Some(None)` when there is none, or `None`
  /// when the async path must run the call.
  pub fn get(&self, sid: &str, now: DateTime<Utc>) -> Option<Option<String>> {
    let guard = self.conns.try_lock().ok()?;
    let conn = &guard.as_ref()?.reader;
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

  /// Runs one write in the open transaction, beginning one if needed, and returns its row
  /// count, or `None` when the async path must run it. The write is durable only once
  /// `commit` returns true.
  pub fn write(&self, write: &PendingWrite, now: DateTime<Utc>) -> Option<u64> {
    let mut guard = self.conns.try_lock().ok()?;
    let conns = guard.as_mut()?;
    let began = match conns.batch {
      Batch::Lost => return None,
      // With a zero busy timeout, a lock held elsewhere fails BEGIN at once.
      Batch::None => {
        conns.writer.execute_batch("BEGIN IMMEDIATE").ok()?;
        true
      }
      Batch::Open => false,
    };
    let conn = &conns.writer;
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
    };
    match changed {
      Ok(changed) => {
        conns.batch = Batch::Open;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Some(u64::try_from(changed).unwrap_or(u64::MAX))
      }
      // The transaction holds nothing yet: end it, or the write lock would stay taken with
      // no commit coming.
      Err(_) if began => {
        if !conn.is_autocommit() {
          let _ = conn.execute_batch("ROLLBACK");
        }
        None
      }
      Err(_) => {
        // Most failures undo only the statement; some (a full disk, an I/O error) end the
        // whole transaction, and the writes before it with it.
        if conn.is_autocommit() {
          conns.batch = Batch::Lost;
        }
        None
      }
    }
  }

  /// Commits the open transaction. Returns whether the writes run since the last commit are
  /// stored (when false the caller runs them again on the async path), and whether a
  /// checkpoint is due.
  pub fn commit(&self) -> (bool, bool) {
    let mut guard = self
      .conns
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(conns) = guard.as_mut() else {
      return (false, false);
    };
    let batch = std::mem::replace(&mut conns.batch, Batch::None);
    let committed = match batch {
      Batch::Open => {
        let committed = conns.writer.execute_batch("COMMIT").is_ok();
        if !conns.writer.is_autocommit() {
          let _ = conns.writer.execute_batch("ROLLBACK");
        }
        committed
      }
      Batch::Lost => false,
      Batch::None => true,
    };
    let due = self.writes.load(Ordering::Relaxed) >= CHECKPOINT_EVERY;
    if due {
      self.writes.store(0, Ordering::Relaxed);
    }
    (committed, due)
  }

  /// Closes the connections, rolling back writes not committed; later calls return `None`.
  pub fn close(&self) {
    let mut guard = self
      .conns
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
    assert_eq!(direct.write(&set("a"), Utc::now()), Some(1));
    assert_eq!(direct.commit(), (true, false));
    assert_eq!(direct.get("a", Utc::now()), Some(Some("{\"n\":1}".into())));
    assert_eq!(direct.get("b", Utc::now()), Some(None));
    let destroy = PendingWrite {
      sid: "a".into(),
      op: WriteOp::Destroy,
    };
    assert_eq!(direct.write(&destroy, Utc::now()), Some(1));
    assert_eq!(direct.commit(), (true, false));
    direct.close();
    assert_eq!(direct.get("a", Utc::now()), None);
    std::fs::remove_file(&path).ok();
  }

  #[test]
  fn get_sees_committed_writes_only() {
    let (path, other) = file();
    let direct = Direct::open(&path, statements()).expect("direct");
    assert_eq!(direct.write(&set("a"), Utc::now()), Some(1));
    assert_eq!(direct.get("a", Utc::now()), Some(None));
    let count = |conn: &Connection| -> i64 {
      conn
        .query_row("SELECT count(*) FROM s", [], |row| row.get(0))
        .expect("count")
    };
    assert_eq!(count(&other), 0);
    assert_eq!(direct.commit(), (true, false));
    assert_eq!(count(&other), 1);
    std::fs::remove_file(&path).ok();
  }

  #[test]
  fn close_rolls_back_uncommitted_writes() {
    let (path, other) = file();
    let direct = Direct::open(&path, statements()).expect("direct");
    assert_eq!(direct.write(&set("a"), Utc::now()), Some(1));
    direct.close();
    assert_eq!(direct.commit(), (false, false));
    let count: i64 = other
      .query_row("SELECT count(*) FROM s", [], |row| row.get(0))
      .expect("count");
    assert_eq!(count, 0);
    std::fs::remove_file(&path).ok();
  }

  #[test]
  fn failed_first_write_frees_lock() {
    let (path, other) = file();
    let direct = Direct::open(&path, statements()).expect("direct");
    other.execute_batch("DROP TABLE s").expect("drop");
    assert_eq!(direct.write(&set("a"), Utc::now()), None);
    other
      .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
      .expect("lock is free");
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
    assert_eq!(direct.write(&set("a"), Utc::now()), Some(1));
    assert_eq!(direct.commit(), (true, false));
    std::fs::remove_file(&path).ok();
  }
}
