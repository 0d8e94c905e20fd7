//! A commit the central acknowledged, lost with its database: a real central on the
//! throwaway PostgreSQL, a real gate process, and a restore from a real backup (`pg_dump`
//! before a batch of online successes, the database dropped and restored with `pg_restore`
//! under the running server). The gate held its online successes; it sees another database
//! in the feed (`database_epoch`) and uploads them again, so none is lost and none admitted
//! twice.

mod common;

use common::{bulk_fixture, is_synced, scan, start_agent, wait_drained, wait_status, Central};
use std::process::Command;
use std::time::{Duration, Instant};

const OTA: &str = "ch-ota-secret";
const LIMIT: Duration = Duration::from_secs(60);
const TICKETS: usize = 6;

fn tool(name: &str) -> std::path::PathBuf {
    stile_testkit::postgres_bindir()
        .expect("PostgreSQL binaries")
        .join(name)
}

async fn redeemed(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT t.ticket_code, count(r.id) FROM tickets t \
         LEFT JOIN redemption_events r ON r.ticket_id = t.id \
         WHERE t.ticket_code LIKE 'TK-B%' GROUP BY t.ticket_code ORDER BY t.ticket_code",
    )
    .fetch_all(pool)
    .await
    .expect("redemptions")
}

#[tokio::test]
async fn online_successes_lost_with_a_restored_database_are_uploaded_again() {
    let central = Central::start(&[bulk_fixture(TICKETS)]).await;
    let (agent, dir) =
        start_agent("dev-east-1", "dev-secret-1", "GATE-EAST", &central.base, "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let mut qrs = Vec::new();
    for i in 0..TICKETS {
        qrs.push(central.issue_qr(&format!("TK-B{i}"), OTA).await);
    }
    // Let the gate see the database it will later lose (its epoch) in a complete sync.
    let seen = wait_status(&agent.base, LIMIT, "a sync after the QRs", is_synced).await;
    wait_status(&agent.base, LIMIT, "one more sync", |s| {
        s["last_sync_at"] != seen["last_sync_at"]
    })
    .await;

    // The backup.
    let backup = dir.path().join("backup.dump");
    let dumped = Command::new(tool("pg_dump"))
        .args(["--format=custom", "--file"])
        .arg(&backup)
        .arg(&central.database_url)
        .output()
        .expect("run pg_dump");
    assert!(
        dumped.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );

    // A batch of online successes after it.
    for qr in &qrs {
        let decision = scan(&agent.base, qr).await;
        assert_eq!(
            (decision["code"].as_str(), decision["mode"].as_str()),
            (Some("SUCCESS"), Some("online")),
            "{decision}"
        );
    }
    assert!(redeemed(&central.pool).await.iter().all(|(_, n)| *n == 1));

    // The database is lost and restored from the backup, under the running server: restored
    // beside it first, then swapped in whole (a server never sees a half-restored database).
    let name = central
        .database_url
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    let staging = format!("{name}_restore");
    let cluster = stile_testkit::Cluster::shared();
    let admin = sqlx::PgPool::connect(cluster.admin_url())
        .await
        .expect("admin connection");
    sqlx::query(&format!("CREATE DATABASE \"{staging}\""))
        .execute(&admin)
        .await
        .expect("create");
    let restored = Command::new(tool("pg_restore"))
        .args(["--no-owner", "--dbname"])
        .arg(cluster.url_of(&staging))
        .arg(&backup)
        .output()
        .expect("run pg_restore");
    assert!(
        restored.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    central.pool.close().await;
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
    sqlx::query(&format!(
        "ALTER DATABASE \"{staging}\" RENAME TO \"{name}\""
    ))
    .execute(&admin)
    .await
    .expect("swap in");
    let pool = sqlx::PgPool::connect(&central.database_url)
        .await
        .expect("connect to the restored database");
    assert!(
        redeemed(&pool).await.iter().all(|(_, n)| *n == 0),
        "the restore lost the batch"
    );

    // The gate notices another database and uploads what it held: each exactly once.
    let started = Instant::now();
    loop {
        let counts = redeemed(&pool).await;
        if counts.iter().all(|(_, n)| *n == 1) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT && counts.iter().all(|(_, n)| *n <= 1),
            "re-uploaded: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = wait_drained(&agent.base, LIMIT, "uploads drained").await;
    assert_eq!(status["outbox"]["conflicts"], 0, "{status}");
    // And none is admitted twice: each ticket's one use is spent.
    for i in 0..TICKETS {
        let qr = central.issue_qr(&format!("TK-B{i}"), OTA).await;
        let decision = scan(&agent.base, &qr).await;
        assert_eq!(decision["code"], "EXHAUSTED", "TK-B{i}: {decision}");
    }
    assert!(redeemed(&pool).await.iter().all(|(_, n)| *n == 1));
}
