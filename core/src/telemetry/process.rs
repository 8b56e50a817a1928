//! The standard `process_*` metrics of Prometheus' client libraries (CPU time, memory, file
//! descriptors, threads, start time), read from `/proc/self` at each scrape.
//!
//! The `prometheus` crate has the same collector behind its `process` feature, which brings
//! `procfs` and its dependencies for the handful of numbers below; this one reads them itself.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// Registers as one collector; every metric is read when the registry is gathered.
pub struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_memory: Gauge,
    resident_memory: Gauge,
    start_time: Gauge,
    threads: Gauge,
}

impl ProcessCollector {
    pub fn new() -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help));
        let c = Self {
            descs: Vec::new(),
            cpu: Counter::with_opts(Opts::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            ))?,
            open_fds: gauge("process_open_fds", "Number of open file descriptors.")?,
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )?,
            threads: gauge("process_threads", "Number of OS threads in the process.")?,
        };
        let descs = c.metrics().iter().flat_map(|m| m.desc()).cloned().collect();
        if let (Some(stat), Some(boot)) = (Stat::read(), boot_time()) {
            c.start_time.set(boot + stat.start_ticks / clock_ticks());
        }
        Ok(Self { descs, ..c })
    }

    fn metrics(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.start_time,
            &self.threads,
        ]
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(stat) = Stat::read() {
            let cpu = stat.cpu_ticks / clock_ticks();
            // A counter only goes up: add what was spent since the last scrape.
            let spent = cpu - self.cpu.get();
            if spent > 0.0 {
                self.cpu.inc_by(spent);
            }
            self.threads.set(stat.threads);
            self.virtual_memory.set(stat.vsize);
            self.resident_memory.set(stat.rss_pages * page_size());
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory being read holds one descriptor of its own.
            self.open_fds.set(dir.count().saturating_sub(1) as f64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(limit.rlim_cur as f64);
        }
        self.metrics().iter().flat_map(|m| m.collect()).collect()
    }
}

/// The fields of `/proc/self/stat` used here.
struct Stat {
    cpu_ticks: f64,
    threads: f64,
    start_ticks: f64,
    vsize: f64,
    rss_pages: f64,
}

impl Stat {
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&text)
    }

    /// `pid (comm) state ppid …`: the command may hold spaces and parentheses, so fields are
    /// counted after the last `)` (field 3, the state, is the first there). proc(5) numbers
    /// them: utime 14, stime 15, num_threads 20, starttime 22, vsize 23, rss 24.
    fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
        Some(Self {
            cpu_ticks: field(14)? + field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// The machine's boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> f64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as f64 } else { 4096.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        let line = "4242 (we ir) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = Stat::parse(line).unwrap();
        assert_eq!(s.cpu_ticks, 300.0);
        assert_eq!(s.threads, 7.0);
        assert_eq!(s.start_ticks, 123456.0);
        assert_eq!(s.vsize, 104857600.0);
        assert_eq!(s.rss_pages, 2560.0);
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_measured() {
        let c = ProcessCollector::new().unwrap();
        let families = c.collect();
        assert_eq!(families.len(), 7);
        let value = |name: &str| {
            let f = families.iter().find(|f| f.name() == name).unwrap();
            let m = &f.get_metric()[0];
            if name.ends_with("_total") {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started > now - 86_400.0 * 365.0 && started <= now + 1.0,
            "{started}"
        );
    }
}
