//! Durations as Consul reads and writes them: Go's `time.ParseDuration` and `Duration.String`.
//!
//! Consul decodes `Interval`, `Timeout`, `TTL` and `DeregisterCriticalServiceAfter` (and the `wait`
//! query parameter) with Go's parser, so `"1h30m"`, `"1.5s"`, `"500ms"` and `"0"` are all valid and a
//! bare `"10"` is not. Its errors reach the client verbatim (`time: invalid duration "abc"`), so they
//! are reproduced here word for word. Checks show their interval as Go prints it (`"1m0s"`).
//! Source: Go's `src/time/format.go` (`ParseDuration`) and `src/time/time.go` (`Duration.String`).

use std::time::Duration;

/// Why a duration string was refused, worded as Go's `time` package words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoDurationError {
    /// Not a duration at all, or one that overflows.
    #[error("time: invalid duration \"{0}\"")]
    Invalid(String),
    /// A number without a unit (`"10"`).
    #[error("time: missing unit in duration \"{0}\"")]
    MissingUnit(String),
    /// A unit Go does not know (`"10x"`).
    #[error("time: unknown unit \"{unit}\" in duration \"{duration}\"")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole duration as written.
        duration: String,
    },
}

const NANOS_PER_UNIT: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration as Go's `time.ParseDuration` does, into signed nanoseconds (Go's durations are
/// signed; Consul treats a non-positive interval or TTL as missing).
///
/// # Errors
/// [`GoDurationError`] with Go's own message.
pub fn parse(text: &str) -> Result<i64, GoDurationError> {
    let invalid = || GoDurationError::Invalid(text.to_owned());
    let mut rest = text;
    let mut negative = false;
    if let Some(sign) = rest.chars().next().filter(|c| *c == '-' || *c == '+') {
        negative = sign == '-';
        rest = &rest[1..];
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let whole_digits = &rest[..digits];
        rest = &rest[digits..];
        let whole: u64 = if whole_digits.is_empty() {
            0
        } else {
            whole_digits.parse().map_err(|_| invalid())?
        };
        let mut fraction_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let count = after_dot.len()
                - after_dot
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            fraction_digits = &after_dot[..count];
            rest = &after_dot[count..];
            if whole_digits.is_empty() && fraction_digits.is_empty() {
                return Err(invalid());
            }
        } else if whole_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c != '.' && !c.is_ascii_digit())
                .len();
        if unit_len == 0 {
            return Err(GoDurationError::MissingUnit(text.to_owned()));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = NANOS_PER_UNIT
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| GoDurationError::UnknownUnit {
                unit: unit.to_owned(),
                duration: text.to_owned(),
            })?;
        let mut value = whole.checked_mul(scale).ok_or_else(invalid)?;
        if !fraction_digits.is_empty() {
            // Go keeps at most the digits that fit and scales them as a float, as here.
            let kept = &fraction_digits[..fraction_digits.len().min(18)];
            let numerator: u64 = kept.parse().map_err(|_| invalid())?;
            let denominator = 10_f64.powi(i32::try_from(kept.len()).map_err(|_| invalid())?);
            value = value
                .checked_add((numerator as f64 * (scale as f64 / denominator)) as u64)
                .ok_or_else(invalid)?;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i64::MAX as u64 + u64::from(negative) {
            return Err(invalid());
        }
    }
    if negative {
        Ok(0_i64.checked_sub_unsigned(total).ok_or_else(invalid)?)
    } else {
        i64::try_from(total).map_err(|_| invalid())
    }
}

/// Signed nanoseconds as a positive [`Duration`], or `None` for zero and below (Consul's "unset").
pub fn positive(nanos: i64) -> Option<Duration> {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
}

/// Formats a duration as Go's `Duration.String` does: `"0s"`, `"500ms"`, `"1.5s"`, `"1m0s"`,
/// `"1h0m0s"`.
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, per) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fixed_point(nanos, per));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = fixed_point(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / per` with its fraction, trailing zeros dropped (`1500, 1000` → `"1.5"`).
fn fixed_point(value: u128, per: u128) -> String {
    let whole = value / per;
    let fraction = value % per;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = per.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Serde for durations stored in the registry's data file, as Go duration strings.
pub(crate) mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*duration))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let nanos = super::parse(&text).map_err(serde::de::Error::custom)?;
        Ok(u64::try_from(nanos)
            .map(Duration::from_nanos)
            .unwrap_or_default())
    }

    /// The same for an optional duration.
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(duration) => serializer.serialize_str(&super::super::format(*duration)),
                None => serializer.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|text| {
                super::super::parse(&text)
                    .map(super::super::positive)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
            .map(Option::flatten)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let cases = [
            ("0", 0),
            ("10s", 10_000_000_000),
            ("5m", 300_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5s", 1_500_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("500ms", 500_000_000),
            ("250us", 250_000),
            ("250µs", 250_000),
            ("7ns", 7),
            ("-2s", -2_000_000_000),
            ("+3s", 3_000_000_000),
            ("1m0s", 60_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse(text), Ok(nanos), "{text}");
        }
    }

    #[test]
    fn refuses_with_gos_messages() {
        let cases = [
            ("", "time: invalid duration \"\""),
            ("abc", "time: invalid duration \"abc\""),
            (".s", "time: invalid duration \".s\""),
            ("-", "time: invalid duration \"-\""),
            ("10", "time: missing unit in duration \"10\""),
            ("10x", "time: unknown unit \"x\" in duration \"10x\""),
            ("1s2", "time: missing unit in duration \"1s2\""),
            (
                "99999999999999999999h",
                "time: invalid duration \"99999999999999999999h\"",
            ),
            ("3000000h", "time: invalid duration \"3000000h\""),
        ];
        for (text, message) in cases {
            match parse(text) {
                Err(error) => assert_eq!(error.to_string(), message, "{text}"),
                Ok(nanos) => panic!("{text} parsed as {nanos}"),
            }
        }
    }

    #[test]
    fn formats_as_go_prints() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_micros(250), "250µs"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (
                Duration::from_secs(5400) + Duration::from_millis(1),
                "1h30m0.001s",
            ),
        ];
        for (duration, text) in cases {
            assert_eq!(format(duration), text);
            assert_eq!(
                parse(text).map(|n| Duration::from_nanos(n.unsigned_abs())),
                Ok(duration)
            );
        }
    }
}
