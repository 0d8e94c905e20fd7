//! `stile-bench-log`: how fast the merchant's reconciliation log pages when it is large.
//!
//! Seeds one merchant with `--rows` redemptions on one day (default 1,000,000; plus a second
//! merchant's rows as noise), starts the release `central-server`, and over real HTTP:
//! fetches page 1 (`--samples` times), walks the keyset pages down to page `--deep-page`
//! (default 1,000) and fetches that page `--samples` times, printing p50/p99 for both and
//! their ratio (keyset paging should not slow down with depth). As a baseline in the same
//! run it times the equivalent `OFFSET` query for the same deep page directly in
//! PostgreSQL, and it prints `EXPLAIN` of the server's own page query to show the index
//! in use. Figures are printed, not asserted.
//!
//! Run: `cargo build --release -p central-server -p stile-tools && target/release/stile-bench-log`

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stile_testkit::ClusterOptions;
use stile_tools::ServerProcess;

#[derive(Parser)]
#[command(
    name = "stile-bench-log",
    about = "Benchmark of GET /merchant/redemptions on a large log"
)]
struct Args {
    /// Redemption rows of the benchmarked merchant (all on one day).
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Rows of a second merchant (noise the index must skip).
    #[arg(long, default_value_t = 200_000)]
    noise_rows: i64,
    /// Page size.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// The deep page to measure.
    #[arg(long, default_value_t = 1000)]
    deep_page: usize,
    /// Timed fetches of each measured page.
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

const DAY: &str = "2026-11-20";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.limit < 1 || args.limit > 200 || args.deep_page < 1 || args.samples < 1 {
        bail!("--limit must be 1-200, --deep-page and --samples at least 1");
    }
    let options = ClusterOptions {
        fast_and_unsafe: false,
        max_connections: 100,
        stat_statements: false,
    };
    let (url, _cluster) = stile_tools::database("stile_bench_log", &options).await?;
    let pool = central_server::db::connect(&url, 4).await?;
    central_server::db::migrate(&pool).await?;
    central_server::keys::ensure_active_key(&pool, &central_server::kek::KeyEncryption::none())
        .await?;

    let started = Instant::now();
    seed(&pool, &args).await?;
    println!(
        "seeded {} + {} noise redemption rows in {:.1} s",
        args.rows,
        args.noise_rows,
        started.elapsed().as_secs_f64()
    );

    let server = ServerProcess::start(&url, &[("RUST_LOG", "warn")]).await?;
    let client = reqwest::Client::new();
    let login: Value = client
        .post(server.url("/operators/login"))
        .json(&json!({"username": "log-op", "password": "bench-password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["token"]
        .as_str()
        .context("login gave no token")?
        .to_owned();
    let page_url = |cursor: Option<&str>| {
        let mut url = server.url(&format!(
            "/merchant/redemptions?date={DAY}&limit={}",
            args.limit
        ));
        if let Some(cursor) = cursor {
            url.push_str("&cursor=");
            url.push_str(cursor);
        }
        url
    };
    let fetch = |url: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let started = Instant::now();
            let response = client.get(url).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("page answered {}", response.status());
            }
            let page: Value = response.json().await?;
            anyhow::Ok((started.elapsed(), page))
        }
    };

    // Page 1.
    let mut first = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let (elapsed, page) = fetch(page_url(None)).await?;
        if page["items"].as_array().map(Vec::len) != Some(args.limit as usize) {
            bail!("page 1 is not full");
        }
        first.push(elapsed);
    }
    // Walk to the deep page.
    let mut cursor: Option<String> = None;
    let mut walk = Vec::with_capacity(args.deep_page);
    let walk_started = Instant::now();
    for page_number in 1..args.deep_page {
        let (elapsed, page) = fetch(page_url(cursor.as_deref())).await?;
        walk.push(elapsed);
        cursor = Some(
            page["next_cursor"]
                .as_str()
                .with_context(|| format!("page {page_number} has no next_cursor"))?
                .to_owned(),
        );
    }
    let walk_total = walk_started.elapsed();
    let mut deep = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let (elapsed, page) = fetch(page_url(cursor.as_deref())).await?;
        if page["items"].as_array().map(Vec::len) != Some(args.limit as usize) {
            bail!("page {} is not full", args.deep_page);
        }
        deep.push(elapsed);
    }

    // Baseline: the same deep page by OFFSET, straight in PostgreSQL.
    let merchant_id: (i64,) = sqlx::query_as("SELECT id FROM merchants WHERE code = 'ML'")
        .fetch_one(&pool)
        .await?;
    let offset = (args.deep_page as i64 - 1) * args.limit;
    let mut by_offset = Vec::with_capacity(args.samples.min(50));
    for _ in 0..args.samples.min(50) {
        let started = Instant::now();
        sqlx::query(
            "SELECT id FROM merchant_redemptions WHERE merchant_id = $1 \
             AND redeemed_at >= $2::date AND redeemed_at < $2::date + 1 \
             ORDER BY redeemed_at DESC, id DESC OFFSET $3 LIMIT $4",
        )
        .bind(merchant_id.0)
        .bind(chrono::NaiveDate::parse_from_str(DAY, "%Y-%m-%d")?)
        .bind(offset)
        .bind(args.limit)
        .fetch_all(&pool)
        .await?;
        by_offset.push(started.elapsed());
    }

    // The plan of the server's own query at the deep page.
    let plan: Vec<(String,)> = sqlx::query_as(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        central_server::merchant::page_sql(true)
    ))
    .bind(merchant_id.0)
    .bind(chrono::DateTime::parse_from_rfc3339(&format!(
        "{DAY}T00:00:00+08:00"
    ))?)
    .bind(chrono::DateTime::parse_from_rfc3339(&format!(
        "{DAY}T23:59:59.999+08:00"
    ))?)
    .bind(chrono::DateTime::parse_from_rfc3339(&format!(
        "{DAY}T12:00:00+08:00"
    ))?)
    .bind(i64::MAX)
    .bind(args.limit + 1)
    .fetch_all(&pool)
    .await?;
    let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
    let uses_index = plan
        .iter()
        .any(|line| line.contains("merchant_redemptions_merchant_time_idx"));

    let (p1_50, p1_99) = (percentile(&first, 50.0), percentile(&first, 99.0));
    let (pd_50, pd_99) = (percentile(&deep, 50.0), percentile(&deep, 99.0));
    let (off_50, off_99) = (percentile(&by_offset, 50.0), percentile(&by_offset, 99.0));
    println!("\nEXPLAIN of the page query after a cursor:");
    for line in &plan {
        println!("    {line}");
    }
    println!(
        "\nGET /merchant/redemptions, {} rows, page size {}",
        args.rows, args.limit
    );
    println!(
        "  page 1:           p50 {:>7.2} ms   p99 {:>7.2} ms   (target p99 <= 20 ms)",
        ms(p1_50),
        ms(p1_99)
    );
    println!(
        "  page {:<5}       p50 {:>7.2} ms   p99 {:>7.2} ms   (target p99 <= 20 ms)",
        args.deep_page,
        ms(pd_50),
        ms(pd_99)
    );
    println!(
        "  walking pages 1..{}: {:.1} s, p99 {:.2} ms per page",
        args.deep_page,
        walk_total.as_secs_f64(),
        ms(percentile(&walk, 99.0))
    );
    println!(
        "  baseline, same page by OFFSET {offset} in SQL alone: p50 {:.2} ms  p99 {:.2} ms",
        ms(off_50),
        ms(off_99)
    );
    println!(
        "  ratios: deep/first page p99 {:.2}x; OFFSET/keyset p50 {:.1}x",
        ms(pd_99) / ms(p1_99).max(0.001),
        ms(off_50) / ms(pd_50).max(0.001)
    );
    println!(
        "  index merchant_redemptions_merchant_time_idx used: {}",
        if uses_index { "yes" } else { "NO" }
    );
    if !uses_index {
        bail!("the page query does not use the log index");
    }
    Ok(())
}

fn percentile(samples: &[Duration], pct: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One merchant with `rows` redemptions spread over one day, another with noise rows.
async fn seed(pool: &sqlx::PgPool, args: &Args) -> anyhow::Result<()> {
    let hash = central_server::auth::hash_password("bench-password")?;
    let mut tx = pool.begin().await?;
    for (code, rows, operator) in [
        ("ML", args.rows, "log-op"),
        ("MN", args.noise_rows, "noise-op"),
    ] {
        let (merchant,): (i64,) = sqlx::query_as(
            "INSERT INTO merchants (code, name, timezone) VALUES ($1, $1, 'Asia/Shanghai') RETURNING id",
        )
        .bind(code)
        .fetch_one(&mut *tx)
        .await?;
        let (location,): (i64,) = sqlx::query_as(
            "INSERT INTO locations (merchant_id, venue_code, name) VALUES ($1, 'GATE', 'Gate') RETURNING id",
        )
        .bind(merchant)
        .fetch_one(&mut *tx)
        .await?;
        let (operator_id,): (i64,) = sqlx::query_as(
            "INSERT INTO operators (merchant_id, username, password_hash) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(merchant)
        .bind(operator)
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await?;
        let (order,): (i64,) = sqlx::query_as(
            "INSERT INTO orders (order_code, merchant_id) VALUES ($1, $2) RETURNING id",
        )
        .bind(format!("ORD-{code}"))
        .bind(merchant)
        .fetch_one(&mut *tx)
        .await?;
        let (ticket,): (i64,) = sqlx::query_as(
            "INSERT INTO tickets (ticket_code, order_id, merchant_id, passenger_name, channel, status) \
             VALUES ($1, $2, $3, 'bench', 'OTA', 'ACTIVATED') RETURNING id",
        )
        .bind(format!("T-{code}"))
        .bind(order)
        .bind(merchant)
        .fetch_one(&mut *tx)
        .await?;
        let (entitlement,): (i64,) = sqlx::query_as(
            "INSERT INTO entitlements (ticket_id, merchant_id, function_code, name, total_uses, remaining_uses) \
             VALUES ($1, $2, 'ENTRY', 'entry', 0, 0) RETURNING id",
        )
        .bind(ticket)
        .bind(merchant)
        .fetch_one(&mut *tx)
        .await?;
        // Spread the rows over the day in Asia/Shanghai.
        sqlx::query(
            "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, \
             operator_id, location_id, redeemed_at, source) \
             SELECT $1 || g, 'ENTRY', $2, $3, $4, $5, $6, \
               ($7::date::timestamp AT TIME ZONE 'Asia/Shanghai') + (g * (86399.0 / $8)) * interval '1 second', 'venue' \
             FROM generate_series(1, $8) AS g",
        )
        .bind(code)
        .bind(ticket)
        .bind(entitlement)
        .bind(merchant)
        .bind(operator_id)
        .bind(location)
        .bind(chrono::NaiveDate::parse_from_str(DAY, "%Y-%m-%d")?)
        .bind(rows)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id, location_id, \
             redemption_event_id, function_code, redeemed_at, decided_at, source) \
             SELECT merchant_id, operator_id, ticket_id, $2, location_id, id, function_code, redeemed_at, redeemed_at, 'venue' \
             FROM redemption_events WHERE merchant_id = $1",
        )
        .bind(merchant)
        .bind(order)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}
