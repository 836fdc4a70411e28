//! Table and column names: validation and quoting.

#![forbid(unsafe_code)]

use crate::error::{Result, StoreError};

/// Maximum identifier length, because PostgreSQL truncates names past 63 bytes.
const MAX_IDENTIFIER_LEN: usize = 63;

/// Quote character of a dialect for identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quote {
  /// `"name"`: SQLite and PostgreSQL.
  Double,
  /// `` `name` ``: MySQL and MariaDB.
  Backtick,
}

/// The validated names of the sessions table and its id column.
#[derive(Clone, Debug)]
pub struct TableNames {
  /// Schema part of `schema.table`, accepted on PostgreSQL only.
  pub schema: Option<String>,
  pub table: String,
  pub sid_column: String,
}

impl TableNames {
  /// Validates `tableName` and `sidFieldName`; `allow_schema` lets `tableName` be `schema.table`.
  pub fn new(table_name: &str, sid_field_name: &str, allow_schema: bool) -> Result<Self> {
    let (schema, table) = match table_name.split_once('.') {
      Some((schema, table)) if allow_schema => (Some(schema), table),
      _ => (None, table_name),
    };
    let extra = if allow_schema {
      ", optionally as schema.table"
    } else {
      ""
    };
    let invalid_table = || StoreError::InvalidIdentifier {
      option: "tableName",
      value: table_name.to_owned(),
      extra,
    };
    if let Some(schema) = schema {
      check_identifier(schema).map_err(|()| invalid_table())?;
    }
    check_identifier(table).map_err(|()| invalid_table())?;
    check_identifier(sid_field_name).map_err(|()| StoreError::InvalidIdentifier {
      option: "sidFieldName",
      value: sid_field_name.to_owned(),
      extra: "",
    })?;
    if ["sess", "expired"].contains(&sid_field_name.to_ascii_lowercase().as_str()) {
      return Err(StoreError::InvalidIdentifier {
        option: "sidFieldName",
        value: sid_field_name.to_owned(),
        extra: ", and not sess or expired, which name the other columns",
      });
    }
    Ok(Self {
      schema: schema.map(str::to_owned),
      table: table.to_owned(),
      sid_column: sid_field_name.to_owned(),
    })
  }

  /// Returns the table as SQL, schema-qualified when a schema was given.
  pub fn quoted_table(&self, quote: Quote) -> String {
    match &self.schema {
      Some(schema) => format!("{}.{}", quoted(schema, quote), quoted(&self.table, quote)),
      None => quoted(&self.table, quote),
    }
  }

  /// Returns the quoted sid column.
  pub fn quoted_sid(&self, quote: Quote) -> String {
    quoted(&self.sid_column, quote)
  }

  /// Returns the quoted name of the expiry index, as knex names it: `<table>_expired_index`.
  pub fn quoted_index(&self, quote: Quote) -> String {
    let name: String = format!("{}_expired_index", self.table)
      .chars()
      .map(|c| {
        if c.is_ascii_alphanumeric() {
          c.to_ascii_lowercase()
        } else {
          '_'
        }
      })
      .take(MAX_IDENTIFIER_LEN)
      .collect();
    quoted(&name, quote)
  }

  /// Returns the table name for messages, as the user wrote it.
  pub fn display(&self) -> String {
    match &self.schema {
      Some(schema) => format!("\"{schema}.{}\"", self.table),
      None => format!("\"{}\"", self.table),
    }
  }
}

/// Accepts a name made of ASCII letters, digits, `_`, `$` and `-`, so quoting cannot be escaped.
fn check_identifier(name: &str) -> std::result::Result<(), ()> {
  let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-');
  if name.is_empty() || name.len() > MAX_IDENTIFIER_LEN || !name.chars().all(allowed) {
    return Err(());
  }
  Ok(())
}

fn quoted(name: &str, quote: Quote) -> String {
  match quote {
    Quote::Double => format!("\"{name}\""),
    Quote::Backtick => format!("`{name}`"),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn accepts_plain_names() {
    let names = TableNames::new("sessions", "session_id", false).expect("valid names");
    assert_eq!(names.quoted_table(Quote::Double), "\"sessions\"");
    assert_eq!(names.quoted_sid(Quote::Backtick), "`session_id`");
    assert_eq!(
      names.quoted_index(Quote::Double),
      "\"sessions_expired_index\""
    );
  }

  #[test]
  fn splits_schema_only_where_allowed() {
    let names = TableNames::new("app.sessions", "sid", true).expect("valid names");
    assert_eq!(names.quoted_table(Quote::Double), "\"app\".\"sessions\"");
    let error = TableNames::new("app.sessions", "sid", false).expect_err("dot rejected");
    assert_eq!(error.code(), "ERR_INVALID_IDENTIFIER");
  }

  #[test]
  fn rejects_names_that_could_escape_quoting() {
    for table in [
      "s\"; DROP TABLE victim; --",
      "s`; DROP TABLE victim; --",
      "s]; DROP TABLE victim; --",
      "",
      "a b",
      "x'y",
    ] {
      let error = TableNames::new(table, "sid", true).expect_err(table);
      assert!(error.to_string().contains("tableName"), "{error}");
    }
    let error = TableNames::new("sessions", "sid) VALUES ('a'); --", false).expect_err("sid");
    assert!(
      error.to_string().starts_with("invalid sidFieldName"),
      "{error}"
    );
  }

  #[test]
  fn rejects_sid_column_named_like_the_others() {
    for name in ["sess", "EXPIRED"] {
      let error = TableNames::new("sessions", name, false).expect_err(name);
      assert!(error.to_string().contains("not sess or expired"), "{error}");
    }
  }

  #[test]
  fn rejects_overlong_names() {
    let long = "s".repeat(64);
    assert!(TableNames::new(&long, "sid", false).is_err());
    assert!(TableNames::new(&"s".repeat(63), "sid", false).is_ok());
  }
}
