//! Instants as services store and send them: integer microseconds since the Unix epoch in the
//! database (portable across SQLite and PostgreSQL through sqlx's Any driver), protobuf `Timestamp`
//! on the wire, RFC 3339 in JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now. A clock before 1970 reads as the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A protobuf `Timestamp` for microseconds since the epoch.
pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        // The remainder is below 10^6, so the nanoseconds fit in i32.
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// RFC 3339 (UTC, `Z`) for a protobuf `Timestamp`, as the JSON mapping of protobuf writes it;
/// `None` for an instant outside 1970-01-01 to 9999-12-31 or with invalid nanoseconds, which the
/// caller leaves out rather than showing a wrong date.
pub fn rfc3339(timestamp: &prost_types::Timestamp) -> Option<String> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    let instant = UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))?;
    // humantime formats years up to 9999 only.
    if seconds >= 253_402_300_800 {
        return None;
    }
    Some(if nanos % 1_000_000 == 0 {
        humantime::format_rfc3339_millis(instant).to_string()
    } else {
        humantime::format_rfc3339_micros(instant).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_become_timestamps_and_rfc3339() {
        let timestamp = timestamp_from_micros(1_700_000_000_123_456);
        assert_eq!(timestamp.seconds, 1_700_000_000);
        assert_eq!(timestamp.nanos, 123_456_000);
        assert_eq!(
            rfc3339(&timestamp).as_deref(),
            Some("2023-11-14T22:13:20.123456Z")
        );
        assert_eq!(
            rfc3339(&timestamp_from_micros(1_000_000)).as_deref(),
            Some("1970-01-01T00:00:01.000Z")
        );
    }

    #[test]
    fn out_of_range_instants_are_refused_not_panicked_on() {
        let cases = [
            (-1, 0),
            (i64::MAX, 0),
            (253_402_300_800, 0),
            (0, -1),
            (0, 1_000_000_000),
        ];
        for (seconds, nanos) in cases {
            let timestamp = prost_types::Timestamp { seconds, nanos };
            assert_eq!(rfc3339(&timestamp), None, "{seconds}s {nanos}ns");
        }
    }
}
