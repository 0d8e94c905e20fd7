//! The redemption baseline of `stile-bench`: the minimal transaction one successful scan
//! needs (`bench/minimal/`, a copy of the project's reference in `../shared/bench/`), run by
//! pgbench on the same cluster as the server, and the database-side counters both are
//! measured with: WAL bytes and statements per transaction, and a process's CPU time.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The directory with `pgbench_scan.sql` and `pgbench_schema.sql`: the reference beside the
/// repository when it is there, else the repository's copy.
pub fn minimal_dir(root: &Path) -> PathBuf {
    let reference = root.join("../shared/bench");
    if reference.join("pgbench_scan.sql").is_file() {
        reference
    } else {
        root.join("bench/minimal")
    }
}

/// What pgbench reported.
#[derive(Debug, Clone)]
pub struct PgbenchResult {
    pub tps: f64,
    pub latency_average_ms: Option<f64>,
    pub transactions: u64,
    /// Percentiles of the per-transaction latencies pgbench logged (`-l`), in ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Reads `tps = X (without initial connection time)`, the average latency and the count.
pub fn parse_pgbench(stdout: &str) -> anyhow::Result<PgbenchResult> {
    let tps = stdout
        .lines()
        .find(|line| line.starts_with("tps = ") && line.contains("without initial connection"))
        .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next())
        .context("no tps line")?
        .parse::<f64>()
        .context("tps is not a number")?;
    let latency_average_ms = stdout
        .lines()
        .find_map(|line| line.strip_prefix("latency average = "))
        .and_then(|rest| rest.trim_end_matches(" ms").trim().parse().ok());
    let transactions = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next()?.trim().parse().ok())
        .unwrap_or(0);
    Ok(PgbenchResult {
        tps,
        latency_average_ms,
        transactions,
        latency_p50_ms: None,
        latency_p99_ms: None,
    })
}

/// The latencies (µs) in pgbench's per-transaction logs (`-l`): each line is
/// `client transaction latency_us script epoch_s epoch_us`.
pub fn parse_pgbench_log(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
        .collect()
}

/// The `pct` percentile (nearest rank) of latencies in µs, sorted, in ms; `None` for no
/// latencies. The one rule for the server's figures and pgbench's, so their p99s compare.
pub fn percentile_ms(sorted_us: &[u64], pct: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[index] as f64 / 1000.0)
}

/// A binary of the PostgreSQL installation the bench cluster runs on, else from the PATH.
pub fn postgres_tool(name: &str) -> PathBuf {
    stile_testkit::postgres_bindir()
        .ok()
        .map(|dir| dir.join(name))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// (Re)loads the minimal schema with `pool` tickets into the database at `url`.
pub fn load_minimal_schema(dir: &Path, url: &str, pool: u64) -> anyhow::Result<()> {
    let output = std::process::Command::new(postgres_tool("psql"))
        .args(["-q", "-X", "-v", &format!("pool={pool}"), "-f"])
        .arg(dir.join("pgbench_schema.sql"))
        .arg(url)
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!(
            "loading {}: {}",
            dir.join("pgbench_schema.sql").display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// pgbench with `script` (`-M prepared`, `clients` clients on two threads, `secs` seconds,
/// the `-D` definitions given).
pub async fn run_pgbench(
    script: &Path,
    url: &str,
    clients: usize,
    secs: u64,
    defines: &[(String, String)],
) -> anyhow::Result<PgbenchResult> {
    let pgbench = postgres_tool("pgbench");
    let logs = tempfile::tempdir().context("a directory for pgbench's logs")?;
    let mut command = tokio::process::Command::new(&pgbench);
    command
        .args(["-n", "-M", "prepared", "-l", "--log-prefix"])
        .arg(logs.path().join("pgbench_log"))
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &secs.to_string()]);
    for (name, value) in defines {
        command.args(["-D", &format!("{name}={value}")]);
    }
    let output = command
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}):\n{}\n{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut result =
        parse_pgbench(&stdout).with_context(|| format!("reading pgbench's report:\n{stdout}"))?;
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(logs.path()).context("pgbench's logs")? {
        let text = std::fs::read_to_string(entry?.path()).context("a pgbench log")?;
        latencies.extend(parse_pgbench_log(&text));
    }
    latencies.sort_unstable();
    result.latency_p50_ms = percentile_ms(&latencies, 50.0);
    result.latency_p99_ms = percentile_ms(&latencies, 99.0);
    Ok(result)
}

/// Cluster-wide WAL position and this database's top-level statement count (from
/// `pg_stat_statements` when the cluster loads it).
#[derive(Debug, Clone, Copy)]
pub struct DbCounters {
    wal_lsn: u64,
    statements: Option<i64>,
    /// WAL records and full-page images so far (`pg_stat_wal`, cluster-wide).
    wal_records: i64,
    wal_fpi: i64,
}

fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

impl DbCounters {
    pub async fn read(pool: &sqlx::PgPool) -> anyhow::Result<DbCounters> {
        let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await?;
        let statements: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT sum(calls)::bigint FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
        let (wal_records, wal_fpi): (i64, i64) =
            sqlx::query_as("SELECT wal_records, wal_fpi FROM pg_stat_wal")
                .fetch_one(pool)
                .await?;
        Ok(DbCounters {
            wal_lsn: parse_lsn(&lsn).context("pg_current_wal_lsn")?,
            statements: statements.and_then(|(n,)| n),
            wal_records,
            wal_fpi,
        })
    }

    /// (WAL records, full-page images) per unit of work between `self` and `later`.
    pub fn records_per(&self, later: &DbCounters, units: u64) -> (f64, f64) {
        let units = units.max(1) as f64;
        (
            (later.wal_records - self.wal_records) as f64 / units,
            (later.wal_fpi - self.wal_fpi) as f64 / units,
        )
    }

    /// (WAL bytes, statements) per unit of work between `self` and `later`.
    pub fn per(&self, later: &DbCounters, units: u64, own_statements: i64) -> (f64, Option<f64>) {
        let units = units.max(1) as f64;
        let wal = later.wal_lsn.saturating_sub(self.wal_lsn) as f64 / units;
        let statements = match (self.statements, later.statements) {
            // The counter reads are statements too.
            (Some(a), Some(b)) => Some((b - a - own_statements).max(0) as f64 / units),
            _ => None,
        };
        (wal, statements)
    }
}

/// CPU time (user + system) of a process so far, in seconds, from `/proc/<pid>/stat`.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

/// CPU time the whole machine spent busy so far (user, nice, system, irq, softirq, steal:
/// everything but idle and I/O wait), in seconds, from `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy / 100.0)
}

/// Cores used between two CPU-time readings `elapsed` seconds apart.
pub fn cores(before: Option<f64>, after: Option<f64>, elapsed: f64) -> Option<f64> {
    Some((after? - before?) / elapsed.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_pgbench_reports_are_read() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        let report = "number of transactions actually processed: 3216/3216\nlatency average = 9.950 ms\ntps = 3216.5 (without initial connection time)\n";
        let parsed = parse_pgbench(report).expect("parsed");
        assert_eq!(parsed.transactions, 3216);
        assert_eq!(parsed.latency_average_ms, Some(9.95));
        assert!((parsed.tps - 3216.5).abs() < 1e-9);
        assert!(process_cpu_secs(std::process::id()).is_some());
        assert!(machine_busy_secs().is_some_and(|secs| secs > 0.0));
    }

    #[test]
    fn pgbench_logs_give_latency_percentiles() {
        let log = "0 1 1500 0 1700000000 1\n0 2 2500 0 1700000000 2\n1 1 99000 0 1700000000 3\n";
        let mut latencies = parse_pgbench_log(log);
        assert_eq!(latencies.len(), 3);
        latencies.sort_unstable();
        assert_eq!(percentile_ms(&latencies, 50.0), Some(2.5));
        assert_eq!(percentile_ms(&latencies, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[], 99.0), None);
    }
}
