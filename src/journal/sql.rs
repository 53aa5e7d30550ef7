//! The closed sets the database keeps as TEXT (`Provider`, `RecordingState`), converted here and
//! nowhere else: the rest of the daemon handles the enums, and `calls/` stays free of SQL.
//! A text this version does not know is a conversion error naming the column's meaning and the
//! text, never a panic and never a silent default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::calls::{Provider, RecordingState};

/// A TEXT value outside the set its column holds (written by a newer version, or by hand).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {text:?} in the database")]
pub struct UnknownText {
    what: &'static str,
    text: String,
}

fn from_text<T>(
    value: ValueRef<'_>,
    what: &'static str,
    parse: fn(&str) -> Option<T>,
) -> FromSqlResult<T> {
    let text = value.as_str()?;
    parse(text).ok_or_else(|| {
        FromSqlError::Other(Box::new(UnknownText {
            what,
            text: text.to_string(),
        }))
    })
}

/// A closed set as a TEXT column: written as its `as_str`, read back through its `parse`.
macro_rules! text_column {
    ($type:ty, $what:literal) => {
        impl ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl FromSql for $type {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                from_text(value, $what, <$type>::parse)
            }
        }
    };
}

text_column!(Provider, "provider");
text_column!(RecordingState, "recording state");

/// The providers this version knows, as an SQL list (`'jas', 'telecmi'`): queries that must
/// leave another provider's rows alone (for the version that wrote them) say `IN (…)` this.
pub(super) fn known_providers() -> String {
    Provider::ALL
        .iter()
        .map(|p| format!("'{}'", p.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn each_value_round_trips_and_an_unknown_text_is_an_error_naming_it() {
        let conn = Connection::open_in_memory().unwrap();
        for p in Provider::ALL {
            let back: Provider = conn.query_row("SELECT ?1", [p], |r| r.get(0)).unwrap();
            assert_eq!(back, p);
        }
        for s in [
            RecordingState::Pending,
            RecordingState::Downloading,
            RecordingState::Downloaded,
            RecordingState::Failed,
        ] {
            let text: String = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(text, s.as_str());
            let back: RecordingState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        let err = conn
            .query_row("SELECT 'third'", [], |r| r.get::<_, Provider>(0))
            .unwrap_err();
        assert!(
            err.to_string().contains(r#"unknown provider "third""#),
            "{err}"
        );
        let err = conn
            .query_row("SELECT 'skipped'", [], |r| r.get::<_, RecordingState>(0))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"unknown recording state "skipped""#),
            "{err}"
        );
        // Not text at all: rusqlite's own type error, still no panic.
        assert!(
            conn.query_row("SELECT 7", [], |r| r.get::<_, Provider>(0))
                .is_err()
        );
    }
}
