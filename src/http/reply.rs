//! The reply every webhook endpoint gives once an event is journaled, shared by all providers so
//! that they answer alike: `accepted` with the journal id, `duplicate`, or `ignored`.

use serde_json::{Value, json};

/// How an event was taken, for the reply and the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted(i64),
    Duplicate,
    Ignored,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }

    pub fn reply(self) -> Value {
        match self {
            Outcome::Accepted(id) => json!({ "status": "accepted", "id": id.to_string() }),
            other => json!({ "status": other.label() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            Outcome::Accepted(7).reply(),
            json!({"status": "accepted", "id": "7"})
        );
        assert_eq!(Outcome::Duplicate.reply(), json!({"status": "duplicate"}));
        assert_eq!(Outcome::Ignored.reply(), json!({"status": "ignored"}));
    }
}
