//! The process metrics every Prometheus client library exports, under the names dashboards expect:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds` and `process_start_time_seconds`, read from `/proc` at
//! each scrape.
//!
//! Written here rather than taken from a crate: `prometheus-client` has no process collector, the
//! `prometheus` crate's belongs to its own registry, and `procfs` would be a large dependency for
//! six numbers. On systems without `/proc` the collector reports nothing.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat`: Linux fixes `USER_HZ` at 100 for every
/// architecture it reports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// Collects the process metrics of the process it runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// One reading of the process's figures; a figure `/proc` did not give is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl Reading {
    fn of(proc: &Path) -> Self {
        let stat = std::fs::read_to_string(proc.join("self/stat")).unwrap_or_default();
        let status = std::fs::read_to_string(proc.join("self/status")).unwrap_or_default();
        let limits = std::fs::read_to_string(proc.join("self/limits")).unwrap_or_default();
        let system_stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        let stat_fields = stat_fields(&stat);
        let ticks = |field: usize| -> Option<f64> {
            stat_fields
                .get(field)?
                .parse::<u64>()
                .ok()
                .map(|ticks| ticks as f64)
        };
        let boot_time = system_stat
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|seconds| seconds.trim().parse::<u64>().ok());
        Self {
            // utime and stime, the 14th and 15th fields (the 12th and 13th after the state).
            cpu_seconds: ticks(11)
                .zip(ticks(12))
                .map(|(user, system)| (user + system) / TICKS_PER_SECOND),
            resident_bytes: status_kib(&status, "VmRSS:").map(|kib| kib * 1024),
            virtual_bytes: status_kib(&status, "VmSize:").map(|kib| kib * 1024),
            open_fds: std::fs::read_dir(proc.join("self/fd"))
                .ok()
                .and_then(|entries| i64::try_from(entries.count()).ok()),
            max_fds: limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3)?.parse().ok()),
            // starttime, the 22nd field: ticks after boot.
            start_time_seconds: ticks(19)
                .zip(boot_time)
                .map(|(after_boot, boot)| boot as f64 + after_boot / TICKS_PER_SECOND),
        }
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, which is in parentheses and may hold
/// spaces and parentheses itself: the first one is the state.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// A `Name:   123 kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, name: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let reading = Reading::of(Path::new("/proc"));
        if let Some(seconds) = reading.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                reading.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                reading.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                reading.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(seconds) = reading.start_time_seconds {
            let gauge = ConstGauge::new(seconds);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Format, Metrics};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let fields = stat_fields(
            "42 (tokio (worker) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1234 1000 200",
        );
        assert_eq!(fields.first(), Some(&"S"));
        assert_eq!(fields.get(11), Some(&"250"));
        assert_eq!(fields.get(12), Some(&"50"));
        assert_eq!(fields.get(19), Some(&"1234"));
    }

    #[test]
    fn figures_are_read_from_a_proc_tree() -> TestResult {
        let proc = std::env::temp_dir().join(format!("flotilla-proc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(proc.join("self/fd"))?;
        for fd in ["0", "1", "2"] {
            std::fs::write(proc.join("self/fd").join(fd), "")?;
        }
        std::fs::write(
            proc.join("self/stat"),
            "7 (flotilla) S 1 7 7 0 -1 0 0 0 0 0 250 50 0 0 20 0 9 0 1000 1 1",
        )?;
        std::fs::write(
            proc.join("self/status"),
            "Name:\tflotilla\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\n",
        )?;
        std::fs::write(
            proc.join("self/limits"),
            "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n",
        )?;
        std::fs::write(proc.join("stat"), "cpu  1 2 3\nbtime 1700000000\n")?;
        let reading = Reading::of(&proc);
        std::fs::remove_dir_all(&proc)?;
        assert_eq!(
            reading,
            Reading {
                cpu_seconds: Some(3.0),
                resident_bytes: Some(1024 * 1024),
                virtual_bytes: Some(2048 * 1024),
                open_fds: Some(3),
                max_fds: Some(1024),
                start_time_seconds: Some(1_700_000_010.0),
            }
        );
        Ok(())
    }

    #[test]
    fn this_process_reports_its_figures() -> TestResult {
        let metrics = Metrics::new();
        metrics.register_collector(ProcessCollector);
        let text = metrics.render(Format::Prometheus)?;
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
            .ok_or("no rss")?
            .parse()?;
        assert!(
            rss > 1_000_000.0,
            "a test process holds more than a megabyte: {rss}"
        );
        Ok(())
    }
}
