//! Errors of the native core and their single conversion into a JS error.
//!
//! napi-rs (3.x) lets an `async fn` reject only with its own status codes, not with a custom
//! `code` (napi-rs issue 2178). So `From<StoreError> for napi::Error` writes the code as a
//! `[CODE] ` prefix of the message, and `lib/errors.js` moves it into `error.code`. Remove both
//! ends of that shim once napi-rs can carry a custom code out of an async method.

use std::fmt;

/// Everything the store can fail with. `code()` is the stable name users match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
  /// An option value the store cannot use (wrong type, out of range).
  #[error("invalid option {option}: {reason}")]
  InvalidOption {
    option: &'static str,
    reason: String,
  },

  /// A URL that cannot be parsed or has a scheme we do not serve.
  #[error("invalid database URL {url}: {reason}")]
  InvalidUrl { url: String, reason: String },

  /// A knex client name we do not support.
  #[error(
    "unsupported client {client:?}: use one of pg, postgres, postgresql, pgnative, mysql, \
     mysql2, mariadb, sqlite3, sqlite or better-sqlite3"
  )]
  UnsupportedClient { client: String },

  /// A table or column name that is not a plain identifier.
  #[error(
    "invalid {option} {value:?}: use letters, digits, `_`, `$` and `-` only, at most 63 \
     characters{extra}"
  )]
  InvalidIdentifier {
    option: &'static str,
    value: String,
    extra: &'static str,
  },

  /// An argument of a store call that cannot be used, such as an expiry out of range.
  #[error("invalid argument {name}: {reason}")]
  InvalidArgument { name: &'static str, reason: String },

  /// The sessions table does not exist and `createTable` is off.
  #[error(
    "table {table} does not exist in {target}: create it (see the schema in the README) or \
     pass createTable: true"
  )]
  TableMissing { table: String, target: String },

  /// The table exists but lacks a column the store needs, or has one of a type it cannot use.
  #[error("table {table} cannot be used: {reason}")]
  TableUnusable { table: String, reason: String },

  /// The database could not be reached or refused the login.
  #[error("cannot connect to {target}: {source}; check that the server runs and the credentials")]
  Connect {
    target: String,
    #[source]
    source: sqlx::Error,
  },

  /// An established connection broke while a statement ran (server restart, killed backend).
  #[error(
    "{operation} lost its connection to {target}: {source}; the next call uses a new connection"
  )]
  ConnectionLost {
    operation: &'static str,
    target: String,
    #[source]
    source: sqlx::Error,
  },

  /// The SQLite file could not be opened or created.
  #[error("cannot open {target}: {source}; check that its folder exists and is writable")]
  OpenFile {
    target: String,
    #[source]
    source: sqlx::Error,
  },

  /// No pooled connection became free within the acquire timeout.
  #[error(
    "timed out waiting for a connection to {target}: every pooled connection is busy, or the \
     server refuses or does not answer new connections; check the server first, then \
     pool.max and pool.acquireTimeoutMillis"
  )]
  PoolTimeout { target: String },

  /// A call ran longer than the query timeout.
  #[error(
    "{operation} timed out after {millis} ms: the database is slow or a lock blocks the table; \
     raise queryTimeoutMillis if such waits are expected"
  )]
  QueryTimeout {
    operation: &'static str,
    millis: u128,
  },

  /// The server ended a statement that waited too long for a row lock or ran past the
  /// statement time limit, both of which the store sets from the query timeout.
  #[error(
    "{operation} was stopped by {target}: {source}. Another client may hold a lock on the \
     session's row, or the database is slow; raise queryTimeoutMillis if such waits are expected"
  )]
  ServerTimeout {
    operation: &'static str,
    target: String,
    #[source]
    source: sqlx::Error,
  },

  /// A MySQL/MariaDB table whose sid collation ignores case or trailing spaces already contains
  /// a sid equal to this one under that collation.
  #[error(
    "sid {sid} collides with a stored sid that differs only in case or trailing spaces: change \
     the sid column to a binary collation (utf8mb4_nopad_bin on MariaDB, utf8mb4_0900_bin on \
     MySQL 8)"
  )]
  SidConflict { sid: String },

  /// `close()` was called on the store.
  #[error("the store is closed: create a new store to use the database again")]
  Closed,

  /// A stored value the store cannot read back.
  #[error("stored session {sid} cannot be read: {reason}")]
  CorruptRow { sid: String, reason: String },

  /// Any other error the database returned.
  #[error("{operation} failed on {target}: {source}")]
  Database {
    operation: &'static str,
    target: String,
    #[source]
    source: sqlx::Error,
  },
}

impl StoreError {
  /// Returns the stable, documented code of this error.
  pub fn code(&self) -> &'static str {
    match self {
      Self::InvalidOption { .. } => "ERR_INVALID_OPTION",
      Self::InvalidUrl { .. } => "ERR_INVALID_URL",
      Self::UnsupportedClient { .. } => "ERR_UNSUPPORTED_CLIENT",
      Self::InvalidIdentifier { .. } => "ERR_INVALID_IDENTIFIER",
      Self::InvalidArgument { .. } => "ERR_INVALID_ARGUMENT",
      Self::TableMissing { .. } => "ERR_TABLE_MISSING",
      Self::TableUnusable { .. } => "ERR_TABLE_UNUSABLE",
      Self::Connect { .. } | Self::OpenFile { .. } => "ERR_CONNECTION_FAILED",
      Self::ConnectionLost { .. } => "ERR_CONNECTION_LOST",
      Self::PoolTimeout { .. } => "ERR_POOL_TIMEOUT",
      Self::QueryTimeout { .. } | Self::ServerTimeout { .. } => "ERR_QUERY_TIMEOUT",
      Self::SidConflict { .. } => "ERR_SID_CONFLICT",
      Self::Closed => "ERR_STORE_CLOSED",
      Self::CorruptRow { .. } => "ERR_CORRUPT_SESSION",
      Self::Database { .. } => "ERR_DATABASE",
    }
  }

  /// Tells whether the connection broke under the statement, so running it again on another
  /// connection may succeed.
  pub fn is_connection_lost(&self) -> bool {
    match self {
      Self::ConnectionLost { .. } => true,
      Self::Connect { source, .. } => !matches!(source, sqlx::Error::Database(_)),
      _ => false,
    }
  }

  /// Returns the same error for another write of a failed batch, for the kinds that fail every
  /// write of it alike: no pooled connection, a closed store, and errors of the database as a
  /// whole, which `database_wide` selects by their code. Other errors may belong to one write.
  pub fn copy_for_batch(&self, database_wide: impl Fn(&str) -> bool) -> Option<Self> {
    match self {
      Self::PoolTimeout { target } => Some(Self::PoolTimeout {
        target: target.clone(),
      }),
      Self::Closed => Some(Self::Closed),
      Self::Database {
        operation,
        target,
        source: sqlx::Error::Database(db),
      } if db.code().is_some_and(|code| database_wide(&code)) => Some(Self::Database {
        operation,
        target: target.clone(),
        source: sqlx::Error::Database(Box::new(CopiedError {
          message: db.message().to_owned(),
          code: db.code().map(std::borrow::Cow::into_owned),
        })),
      }),
      _ => None,
    }
  }

  /// Classifies a driver error raised while running `operation` against `target`.
  pub fn from_sqlx(operation: &'static str, target: &str, source: sqlx::Error) -> Self {
    match source {
      sqlx::Error::PoolTimedOut => Self::PoolTimeout {
        target: target.to_owned(),
      },
      sqlx::Error::PoolClosed => Self::Closed,
      // The pool opens connections inside calls, so an I/O error there may be a refused
      // connect as well as a broken one: a refused connect never sent the statement.
      sqlx::Error::Io(ref io) if is_refused(io) => Self::Connect {
        target: target.to_owned(),
        source,
      },
      sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => Self::ConnectionLost {
        operation,
        target: target.to_owned(),
        source,
      },
      sqlx::Error::Database(ref db) if is_terminated(db.code().as_deref()) => {
        Self::ConnectionLost {
          operation,
          target: target.to_owned(),
          source,
        }
      }
      sqlx::Error::Tls(_) => Self::Connect {
        target: target.to_owned(),
        source,
      },
      sqlx::Error::Database(ref db) if is_server_timeout(db.as_ref()) => Self::ServerTimeout {
        operation,
        target: target.to_owned(),
        source,
      },
      sqlx::Error::Database(ref db) if is_login_failure(db.code().as_deref()) => Self::Connect {
        target: target.to_owned(),
        source,
      },
      source => Self::Database {
        operation,
        target: target.to_owned(),
        source,
      },
    }
  }
}

/// A database error given to each write of a failed batch: its message and code.
#[derive(Debug)]
struct CopiedError {
  message: String,
  code: Option<String>,
}

impl fmt::Display for CopiedError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&self.message)
  }
}

impl std::error::Error for CopiedError {}

impl sqlx::error::DatabaseError for CopiedError {
  fn message(&self) -> &str {
    &self.message
  }

  fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
    self.code.as_deref().map(std::borrow::Cow::Borrowed)
  }

  fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
    self
  }

  fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
    self
  }

  fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
    self
  }

  fn kind(&self) -> sqlx::error::ErrorKind {
    sqlx::error::ErrorKind::Other
  }
}

fn is_refused(error: &std::io::Error) -> bool {
  use std::io::ErrorKind;
  matches!(
    error.kind(),
    ErrorKind::ConnectionRefused | ErrorKind::NotFound | ErrorKind::AddrNotAvailable
  )
}

/// Tells whether a PostgreSQL code means the server ended the session: 57P01 admin shutdown
/// or terminated backend, 57P02 crash shutdown, 57P03 cannot connect now.
fn is_terminated(code: Option<&str>) -> bool {
  matches!(code, Some("57P01" | "57P02" | "57P03"))
}

/// Tells whether the server ended a statement at a time limit.
fn is_server_timeout(error: &dyn sqlx::error::DatabaseError) -> bool {
  // MySQL and MariaDB report these with the generic SQLSTATE HY000, so the error number
  // identifies them: 1205 innodb_lock_wait_timeout, 1969 MariaDB's max_statement_time, 3024
  // MySQL's max_execution_time.
  if let Some(mysql) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
    return matches!(mysql.number(), 1205 | 1969 | 3024);
  }
  // PostgreSQL: 55P03 lock_timeout, 57014 statement_timeout (or a cancel request).
  matches!(error.code().as_deref(), Some("55P03" | "57014"))
}

/// Tells whether a database error code means the server refused the login or the database name.
fn is_login_failure(code: Option<&str>) -> bool {
  // PostgreSQL: 28000/28P01 bad login, 3D000 unknown database. MySQL: 1045 access denied,
  // 1049 unknown database (sqlx reports MySQL codes as their numbers).
  matches!(code, Some("28000" | "28P01" | "3D000" | "1045" | "1049"))
}

/// Shorthand for results of the core.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Writes the message with its `[CODE] ` prefix; `lib/errors.js` parses exactly this form.
pub struct Coded<'a>(pub &'a StoreError);

impl fmt::Display for Coded<'_> {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "[{}] {}", self.0.code(), self.0)
  }
}

impl From<StoreError> for napi::Error {
  fn from(error: StoreError) -> Self {
    napi::Error::new(napi::Status::GenericFailure, Coded(&error).to_string())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn coded_message_starts_with_code() {
    let error = StoreError::TableMissing {
      table: "\"sessions\"".into(),
      target: "SQLite file a.sqlite".into(),
    };
    let text = Coded(&error).to_string();
    assert!(text.starts_with("[ERR_TABLE_MISSING] table \"sessions\" does not exist"));
  }

  #[test]
  fn batch_copies_shared_errors_only() {
    let timeout = StoreError::PoolTimeout { target: "x".into() };
    let copy = timeout.copy_for_batch(|_| false).map(|error| error.code());
    assert_eq!(copy, Some("ERR_POOL_TIMEOUT"));
    let invalid = StoreError::InvalidArgument {
      name: "sid",
      reason: "too long".into(),
    };
    assert!(invalid.copy_for_batch(|_| true).is_none());
  }

  #[test]
  fn pool_timeout_gets_its_own_code() {
    let error = StoreError::from_sqlx("get", "PostgreSQL", sqlx::Error::PoolTimedOut);
    assert_eq!(error.code(), "ERR_POOL_TIMEOUT");
  }
}
