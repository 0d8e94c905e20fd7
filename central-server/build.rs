//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` directory at compile time, and cargo does not watch it by itself, so an
//! incremental build would otherwise serve a schema without the newest migration.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
