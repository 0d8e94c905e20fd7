//! A primary whose synchronous standby is gone must not acknowledge a commit, whatever the
//! serving pool's `statement_timeout`.
//!
//! The fault: a real PostgreSQL (durable settings) told to wait for a synchronous standby
//! that never connects (`synchronous_standby_names`), which is what a primary cut off from
//! its standby sees. The pool is the server's own (`db::connect_with`) with a short
//! `statement_timeout`. PostgreSQL lifts the statement timeout before the commit's wait for
//! the standby (`finish_xact_command`), so the `COMMIT` waits, its row invisible to every
//! other session, until the standby has it; the request waiting on it is answered 503 at its
//! deadline meanwhile. If that ever changed, a cut-off primary would acknowledge commits a
//! failover then loses: this test is the guard.

use central_server::db::{self, PoolLimits};
use std::time::Duration;
use stile_testkit::{Cluster, ClusterOptions};

async fn visible(pool: &sqlx::PgPool, id: i32) -> bool {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM durable WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count");
    n == 1
}

async fn set_standby_names(admin: &sqlx::PgPool, names: &str) {
    sqlx::query(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
    ))
    .execute(admin)
    .await
    .expect("alter system");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(admin)
        .await
        .expect("reload");
    // Backends read the new setting at their next command; give the reload a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waiting_for_a_missing_standby_is_never_acknowledged() {
    let cluster = Cluster::start(&ClusterOptions {
        fast_and_unsafe: false,
        ..ClusterOptions::default()
    })
    .expect("a durable cluster");
    let admin = sqlx::PgPool::connect(cluster.admin_url())
        .await
        .expect("admin");
    sqlx::query("CREATE TABLE durable (id int PRIMARY KEY)")
        .execute(&admin)
        .await
        .expect("table");
    let limits = PoolLimits {
        statement_timeout: Duration::from_millis(300),
        ..PoolLimits::with_connections(4)
    };
    let pool = db::connect_with(cluster.admin_url(), limits)
        .await
        .expect("pool");
    // The pool's timeout is in force: a statement longer than it is cancelled.
    let slow = sqlx::query("SELECT pg_sleep(2)").execute(&pool).await;
    assert_eq!(
        slow.as_ref().err().and_then(db::sqlstate).as_deref(),
        Some("57014"),
        "statement_timeout cancels a long statement: {slow:?}"
    );

    set_standby_names(&admin, "standby_that_never_comes").await;
    for autocommit in [false, true] {
        let id = i32::from(autocommit) + 1;
        let pending = if autocommit {
            let pool = pool.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO durable VALUES ($1)")
                    .bind(id)
                    .execute(&pool)
                    .await
                    .map(|_| ())
            })
        } else {
            let mut tx = central_server::db::begin(&pool).await.expect("begin");
            sqlx::query("INSERT INTO durable VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .expect("insert");
            tokio::spawn(tx.commit())
        };
        // Several statement timeouts later, still waiting and still invisible.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !pending.is_finished(),
            "a commit came back without its standby (autocommit: {autocommit})"
        );
        assert!(
            !visible(&admin, id).await,
            "a commit the standby has not seen is visible (autocommit: {autocommit})"
        );
        // The standby requirement lifted (the standby caught up, or the monitor gave up on
        // it and said so): the commit completes.
        set_standby_names(&admin, "").await;
        let done = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("the commit completes once no standby is awaited")
            .expect("task");
        done.expect("committed");
        assert!(visible(&admin, id).await);
        set_standby_names(&admin, "standby_that_never_comes").await;
    }
}
