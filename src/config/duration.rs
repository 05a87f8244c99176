//! Durations written the way operators write them: `500ms`, `2s`, `1m`, `1h`.
//!
//! A small parser of our own rather than a crate: the grammar is one number
//! and one unit, and the error message can say exactly what is accepted.

use std::fmt;
use std::str::FromStr;

/// A `std::time::Duration` that parses from `<number><unit>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: write a whole number and a unit, e.g. 500ms, 2s, 1m or 1h")]
pub struct DurationError(String);

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        let trimmed = s.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(err)?;
        let (number, unit) = trimmed.split_at(split);
        let n: u64 = number.parse().map_err(|_| err())?;
        let millis = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => None,
        }
        .ok_or_else(err)?;
        Ok(Duration(std::time::Duration::from_millis(millis)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_each_unit() {
        assert_eq!("500ms".parse(), Ok(Duration(Std::from_millis(500))));
        assert_eq!("2s".parse(), Ok(Duration(Std::from_secs(2))));
        assert_eq!("1m".parse(), Ok(Duration(Std::from_secs(60))));
        assert_eq!("1h".parse(), Ok(Duration(Std::from_secs(3600))));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "",
            "2",
            "s",
            "1.5s",
            "-1s",
            "2 days",
            "99999999999999999999h",
        ] {
            let e = bad.parse::<Duration>().unwrap_err();
            assert!(e.to_string().contains("500ms"), "{bad}: {e}");
        }
    }
}
