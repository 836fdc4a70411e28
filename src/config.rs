//! Connection targets: a URL or connection fields turned into driver connect options.

#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::SqliteConnectOptions;

use crate::error::{Result, StoreError};

/// The connection settings the JS wrapper read from the `knex` option.
#[derive(Clone, Debug, Default)]
pub struct ConnectionConfig {
  /// knex client name (`pg`, `mysql2`, `sqlite3`, ...) or a dialect name.
  pub client: Option<String>,
  pub url: Option<String>,
  pub host: Option<String>,
  pub port: Option<u16>,
  pub user: Option<String>,
  pub password: Option<String>,
  pub database: Option<String>,
  /// SQLite file, or `:memory:`.
  pub filename: Option<String>,
  pub socket_path: Option<String>,
  /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
  pub ssl_mode: Option<String>,
  /// PostgreSQL `search_path`.
  pub search_path: Option<String>,
}

/// Pool limits; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolConfig {
  pub max: Option<u32>,
  pub min: Option<u32>,
  pub acquire_timeout: Option<Duration>,
  pub idle_timeout: Option<Duration>,
}

impl PoolConfig {
  /// Returns the idle timeout, keeping sqlx's default of 10 minutes when none was given.
  pub fn idle(&self) -> Option<Duration> {
    Some(self.idle_timeout.unwrap_or(Duration::from_secs(600)))
  }

  /// Returns the acquire timeout, or the store's default.
  pub fn acquire(&self) -> Duration {
    self.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT)
  }
}

/// Default wait for a pooled connection; sqlx's own default is 30 s.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A database to connect to, with a description for messages that carries no password.
#[derive(Clone, Debug)]
pub enum Target {
  Sqlite {
    options: SqliteConnectOptions,
    in_memory: bool,
    label: String,
  },
  Postgres {
    options: PgConnectOptions,
    label: String,
  },
  Mysql {
    options: MySqlConnectOptions,
    label: String,
  },
}

/// The dialects, as named by knex client names and URL schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
  Sqlite,
  Postgres,
  Mysql,
}

impl Target {
  /// Returns the description of the database used in messages, without a password.
  pub fn label(&self) -> &str {
    match self {
      Self::Sqlite { label, .. } | Self::Postgres { label, .. } | Self::Mysql { label, .. } => {
        label
      }
    }
  }

  /// Builds the target from a URL when one is given, else from the client and fields.
  pub fn from_config(config: &ConnectionConfig) -> Result<Self> {
    let dialect = config
      .client
      .as_deref()
      .map(dialect_of_client)
      .transpose()?;
    let target = match (&config.url, dialect) {
      (Some(url), _) => Self::from_url(url, dialect)?,
      (None, Some(dialect)) => Self::from_fields(dialect, config)?,
      (None, None) => Self::from_fields(Dialect::Sqlite, config)?,
    };
    Ok(match (target, &config.search_path) {
      (Self::Postgres { options, label }, Some(search_path)) => Self::Postgres {
        options: options.options([("search_path", search_path.as_str())]),
        label,
      },
      (target, _) => target,
    })
  }

  fn from_url(url: &str, client: Option<Dialect>) -> Result<Self> {
    let shown = redact(url);
    let invalid = |reason: String| StoreError::InvalidUrl {
      url: shown.clone(),
      reason,
    };
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
    let dialect = match scheme {
      "sqlite" | "file" => Dialect::Sqlite,
      "postgres" | "postgresql" => Dialect::Postgres,
      "mysql" | "mariadb" => Dialect::Mysql,
      _ => {
        return Err(invalid(
          "use a sqlite:, postgres:, postgresql:, mysql: or mariadb: URL".into(),
        ))
      }
    };
    if client.is_some_and(|client| client != dialect) {
      return Err(invalid(
        "the URL scheme does not match the knex client".into(),
      ));
    }
    match dialect {
      Dialect::Sqlite => Ok(sqlite_target(&sqlite_path_of_url(url))),
      Dialect::Postgres => {
        let options = PgConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
        let label = pg_label(&options);
        Ok(Self::Postgres { options, label })
      }
      Dialect::Mysql => {
        let url = url.replacen("mariadb:", "mysql:", 1);
        let options = MySqlConnectOptions::from_str(&url).map_err(|e| invalid(e.to_string()))?;
        Ok(Self::Mysql {
          options,
          label: format!("MySQL at {}", host_part(&shown)),
        })
      }
    }
  }

  fn from_fields(dialect: Dialect, config: &ConnectionConfig) -> Result<Self> {
    match dialect {
      Dialect::Sqlite => {
        let filename = config
          .filename
          .clone()
          .unwrap_or_else(|| "connect-session-knex.sqlite".into());
        Ok(sqlite_target(&filename))
      }
      Dialect::Postgres => Ok(postgres_from_fields(config)?),
      Dialect::Mysql => Ok(mysql_from_fields(config)?),
    }
  }
}

/// Maps a knex client name to its dialect.
fn dialect_of_client(client: &str) -> Result<Dialect> {
  match client {
    "pg" | "postgres" | "postgresql" | "pgnative" => Ok(Dialect::Postgres),
    "mysql" | "mysql2" | "mariadb" | "mariasql" => Ok(Dialect::Mysql),
    "sqlite3" | "sqlite" | "better-sqlite3" => Ok(Dialect::Sqlite),
    _ => Err(StoreError::UnsupportedClient {
      client: client.to_owned(),
    }),
  }
}

/// Reads the file part of `sqlite://path`, `sqlite:path` or `sqlite::memory:`.
fn sqlite_path_of_url(url: &str) -> String {
  let rest = url.split_once(':').map(|(_, rest)| rest).unwrap_or("");
  let rest = rest.strip_prefix("//").unwrap_or(rest);
  let path = rest.split_once('?').map(|(path, _)| path).unwrap_or(rest);
  path.to_owned()
}

fn sqlite_target(filename: &str) -> Target {
  let in_memory = matches!(filename, ":memory:" | "" | "memory");
  let options = if in_memory {
    SqliteConnectOptions::new().in_memory(true)
  } else {
    SqliteConnectOptions::new()
      .filename(filename)
      .create_if_missing(true)
  };
  let label = if in_memory {
    "SQLite in-memory database".to_owned()
  } else {
    format!("SQLite file {filename}")
  };
  Target::Sqlite {
    options,
    in_memory,
    label,
  }
}

fn postgres_from_fields(config: &ConnectionConfig) -> Result<Target> {
  let mut options = PgConnectOptions::new();
  if let Some(host) = &config.host {
    options = options.host(host);
  }
  if let Some(port) = config.port {
    options = options.port(port);
  }
  if let Some(socket) = &config.socket_path {
    options = options.socket(socket);
  }
  if let Some(user) = &config.user {
    options = options.username(user);
  }
  if let Some(password) = &config.password {
    options = options.password(password);
  }
  if let Some(database) = &config.database {
    options = options.database(database);
  }
  if let Some(mode) = &config.ssl_mode {
    let mode = PgSslMode::from_str(mode).map_err(|_| invalid_ssl_mode(mode))?;
    options = options.ssl_mode(mode);
  }
  let label = pg_label(&options);
  Ok(Target::Postgres { options, label })
}

fn mysql_from_fields(config: &ConnectionConfig) -> Result<Target> {
  let mut options = MySqlConnectOptions::new();
  let host = config.host.as_deref().unwrap_or("localhost");
  let port = config.port.unwrap_or(3306);
  options = options.host(host).port(port);
  if let Some(socket) = &config.socket_path {
    options = options.socket(socket);
  }
  if let Some(user) = &config.user {
    options = options.username(user);
  }
  if let Some(password) = &config.password {
    options = options.password(password);
  }
  if let Some(database) = &config.database {
    options = options.database(database);
  }
  if let Some(mode) = &config.ssl_mode {
    // The wrapper speaks PostgreSQL's mode names; MySQL spells them differently.
    let mysql_mode = match mode.as_str() {
      "disable" => "disabled",
      "prefer" => "preferred",
      "require" => "required",
      "verify-ca" => "verify_ca",
      "verify-full" => "verify_identity",
      other => other,
    };
    let mode = MySqlSslMode::from_str(mysql_mode).map_err(|_| invalid_ssl_mode(mode))?;
    options = options.ssl_mode(mode);
  }
  let database = config.database.as_deref().unwrap_or("");
  Ok(Target::Mysql {
    options,
    label: format!("MySQL at {host}:{port}/{database}"),
  })
}

fn invalid_ssl_mode(mode: &str) -> StoreError {
  StoreError::InvalidOption {
    option: "knex.connection.ssl",
    reason: format!(
      "unknown SSL mode {mode:?}: use disable, prefer, require, verify-ca or verify-full"
    ),
  }
}

fn pg_label(options: &PgConnectOptions) -> String {
  format!(
    "PostgreSQL at {}:{}/{}",
    options.get_host(),
    options.get_port(),
    options.get_database().unwrap_or("")
  )
}

/// Returns `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
  match url::Url::parse(url) {
    Ok(mut parsed) if parsed.password().is_some() => {
      let _ = parsed.set_password(Some("***"));
      parsed.to_string()
    }
    Ok(_) => url.to_owned(),
    // An unparsable URL may still hold a password after `:` and before `@`.
    Err(_) => match (url.find("://"), url.rfind('@')) {
      (Some(start), Some(at)) if at > start => {
        format!("{}://***@{}", &url[..start], &url[at + 1..])
      }
      _ => url.to_owned(),
    },
  }
}

/// Returns `host:port/database` of a redacted URL, for labels.
fn host_part(url: &str) -> String {
  let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
  let rest = rest.rsplit_once('@').map(|(_, rest)| rest).unwrap_or(rest);
  rest
    .split_once('?')
    .map(|(host, _)| host)
    .unwrap_or(rest)
    .to_owned()
}

#[cfg(test)]
mod tests {
  use super::*;

  fn label(target: &Target) -> &str {
    target.label()
  }

  fn url_config(url: &str) -> ConnectionConfig {
    ConnectionConfig {
      url: Some(url.into()),
      ..ConnectionConfig::default()
    }
  }

  #[test]
  fn sqlite_urls_name_the_file() {
    assert_eq!(
      sqlite_path_of_url("sqlite://data/s.sqlite"),
      "data/s.sqlite"
    );
    assert_eq!(
      sqlite_path_of_url("sqlite:///tmp/s.sqlite"),
      "/tmp/s.sqlite"
    );
    assert_eq!(sqlite_path_of_url("sqlite::memory:"), ":memory:");
    let target = Target::from_config(&url_config("sqlite::memory:")).expect("memory URL");
    assert!(matches!(
      target,
      Target::Sqlite {
        in_memory: true,
        ..
      }
    ));
  }

  #[test]
  fn default_is_sqlite_file_in_working_directory() {
    let target = Target::from_config(&ConnectionConfig::default()).expect("default");
    assert_eq!(label(&target), "SQLite file connect-session-knex.sqlite");
  }

  #[test]
  fn password_never_reaches_labels_or_errors() {
    let target = Target::from_config(&url_config("mariadb://root:hunter2@127.0.0.1:3306/test"))
      .expect("mariadb URL");
    assert!(!label(&target).contains("hunter2"), "{}", label(&target));
    let error = Target::from_config(&url_config("redis://u:hunter2@host/0")).expect_err("scheme");
    assert_eq!(error.code(), "ERR_INVALID_URL");
    assert!(!error.to_string().contains("hunter2"), "{error}");
  }

  #[test]
  fn unknown_client_is_named() {
    let config = ConnectionConfig {
      client: Some("mssql".into()),
      ..ConnectionConfig::default()
    };
    let error = Target::from_config(&config).expect_err("mssql");
    assert_eq!(error.code(), "ERR_UNSUPPORTED_CLIENT");
    assert!(error.to_string().contains("\"mssql\""), "{error}");
  }

  #[test]
  fn client_fields_build_postgres_label() {
    let config = ConnectionConfig {
      client: Some("pg".into()),
      host: Some("127.0.0.1".into()),
      port: Some(5432),
      database: Some("test".into()),
      password: Some("secret".into()),
      ..ConnectionConfig::default()
    };
    let target = Target::from_config(&config).expect("pg fields");
    assert_eq!(label(&target), "PostgreSQL at 127.0.0.1:5432/test");
  }
}
