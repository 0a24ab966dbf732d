//! The call's own deadline, read from (and written back to) its `grpc-timeout` header.
//!
//! tonic's client sets the header from `Request::set_timeout`, and the deadline is enforced by
//! the `Channel` the call is finally sent on, counted from when it gets there. The balancer may
//! hold a call before that (waiting for discovery's first answer, or for an ejected instance's
//! probe), so it bounds those waits by the deadline and, when it waited, hands the channel what
//! is left of it. Format: the gRPC over HTTP/2 specification (`PROTOCOL-HTTP2.md`), at most eight
//! digits and a unit.

use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderMap;

/// The header's name.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The largest value the header may carry in one unit.
const MAX_VALUE: u128 = 99_999_999;

/// The call's timeout, if its header carries a valid one.
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let digits = text.get(..text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    match text.get(digits.len()..)? {
        "H" => Some(Duration::from_secs(value * 3600)),
        "M" => Some(Duration::from_secs(value * 60)),
        "S" => Some(Duration::from_secs(value)),
        "m" => Some(Duration::from_millis(value)),
        "u" => Some(Duration::from_micros(value)),
        "n" => Some(Duration::from_nanos(value)),
        _ => None,
    }
}

/// Replaces the call's timeout with `remaining`, in the finest unit that fits (rounding down:
/// the call must not outlive its deadline).
pub(super) fn set_timeout(headers: &mut HeaderMap, remaining: Duration) {
    let candidates = [
        (remaining.as_nanos(), 'n'),
        (remaining.as_micros(), 'u'),
        (remaining.as_millis(), 'm'),
        (u128::from(remaining.as_secs()), 'S'),
        (u128::from(remaining.as_secs() / 60), 'M'),
    ];
    let (value, unit) = candidates
        .into_iter()
        .find(|(value, _)| *value <= MAX_VALUE)
        .unwrap_or(((u128::from(remaining.as_secs()) / 3600).min(MAX_VALUE), 'H'));
    if let Ok(header) = HeaderValue::from_str(&format!("{value}{unit}")) {
        headers.insert(GRPC_TIMEOUT, header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(GRPC_TIMEOUT, value);
        }
        headers
    }

    #[test]
    fn every_unit_of_the_specification_is_read() {
        assert_eq!(timeout(&with("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(timeout(&with("3M")), Some(Duration::from_secs(180)));
        assert_eq!(timeout(&with("4S")), Some(Duration::from_secs(4)));
        assert_eq!(timeout(&with("250m")), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout(&with("99999999u")),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout(&with("7n")), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn a_missing_or_malformed_header_is_no_timeout() {
        assert_eq!(timeout(&HeaderMap::new()), None);
        for bad in [
            "",
            "m",
            "5",
            "5s",
            "-5m",
            "+5m",
            "123456789m",
            "5 m",
            "1.5S",
            "5mm",
        ] {
            assert_eq!(timeout(&with(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn what_is_written_reads_back_rounded_down_to_its_unit() {
        for remaining in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(200),
            Duration::from_secs(5),
            Duration::from_secs(40_000),
            Duration::from_secs(7 * 24 * 3600),
            Duration::MAX,
        ] {
            let mut headers = HeaderMap::new();
            set_timeout(&mut headers, remaining);
            let read = timeout(&headers).ok_or(format!("{remaining:?} unreadable"));
            assert!(
                read.as_ref().is_ok_and(|read| *read <= remaining),
                "{remaining:?} read back as {read:?}"
            );
        }
        let mut headers = with("9S");
        set_timeout(&mut headers, Duration::from_millis(1500));
        assert_eq!(timeout(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(headers.get_all(GRPC_TIMEOUT).iter().count(), 1);
    }
}
