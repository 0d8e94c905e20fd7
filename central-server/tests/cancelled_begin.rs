//! A transaction whose caller is cancelled while its `BEGIN` is on the wire (a request past
//! its deadline) must not stay open on the pooled connection: the next autocommitted
//! statement on that connection would otherwise answer for writes that commit only with some
//! later `COMMIT`, or never (every autocommitted write of the server relies on this: a
//! merchant's or an operator's change, an upload's record).
//!
//! The fault: the backend of the pool's only connection is stopped with SIGSTOP, so the
//! `BEGIN` is sent and not answered (a busy database); the caller gives up after 300 ms; the backend is
//! continued. The next statement on the pool must commit on its own: another session sees
//! its table at once.

use std::time::Duration;
use stile_testkit::{send_signal, Cluster};

async fn table_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("to_regclass");
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cancelled_on_the_wire_leaves_no_transaction_open() {
    let cluster = Cluster::shared();
    let url = cluster
        .fresh_database(&central_server::db::MIGRATOR)
        .await
        .expect("database");
    // One connection, not pinged when acquired (the server's pool pings it first: a stopped
    // backend would stop the ping, not the BEGIN): the BEGIN is the first thing sent.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .expect("pool");
    let observer = central_server::db::connect(&url, 1)
        .await
        .expect("observer");
    for round in 0..3 {
        let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("backend pid");
        let pid = u32::try_from(pid).expect("pid");
        send_signal(pid, "STOP").expect("SIGSTOP the backend");
        let cancelled =
            tokio::time::timeout(Duration::from_millis(300), central_server::db::begin(&pool))
                .await;
        send_signal(pid, "CONT").expect("SIGCONT the backend");
        assert!(
            cancelled.is_err(),
            "the BEGIN was answered by a stopped backend"
        );
        let table = format!("probe_{round}");
        sqlx::query(&format!("CREATE TABLE {table} (x int)"))
            .execute(&pool)
            .await
            .expect("create table");
        assert!(
            table_exists(&observer, &table).await,
            "round {round}: an autocommitted statement after a cancelled BEGIN did not commit: \
             the connection came back inside a transaction"
        );
    }
}
