//! The admin API's query parameters, read one way everywhere: a bad one is a 400 that names it.

use chrono::{DateTime, Utc};

use super::ApiError;

/// Rows a list gives by default, and at most.
pub const LIST_DEFAULT: usize = 50;
pub const LIST_MAX: usize = 1000;

/// `limit=`: absent or empty is `default`; otherwise an integer from 1 to `max`.
pub fn limit(given: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "invalid `limit`: expected an integer from 1 to {max}"
            ))),
        },
    }
}

/// An RFC 3339 time named `name`; absent or empty is `None`.
pub fn time(name: &str, given: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match given {
        None | Some("") => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| invalid_time(name)),
    }
}

/// The 400 of a time that is missing or not RFC 3339.
pub fn invalid_time(name: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "invalid `{name}`: expected an RFC 3339 time such as 2025-04-14T15:04:23Z"
    ))
}
