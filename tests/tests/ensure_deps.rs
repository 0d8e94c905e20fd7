//! `scripts/ensure-deps --check` against made-up machines: each detection must look for the
//! file its consumer really loads, so a look-alike (the C++ `libclang-cpp.so.14`, a
//! `postgres` without `initdb`, a non-executable browser) still counts as missing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The packages `ensure-deps --check` would install on a machine whose only files are
/// `files` (paths relative to its root; a trailing `*` marks an executable).
fn missing_on(files: &[&str]) -> Vec<String> {
    let root = tempfile::tempdir().expect("temp dir");
    for file in files {
        let (path, executable) = match file.strip_suffix('*') {
            Some(path) => (path, true),
            None => (*file, false),
        };
        let full = root.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(full.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&full, b"").expect("write");
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-deps");
    let output = Command::new("bash")
        .arg(script)
        .arg("--check")
        .env("STILE_DEPS_SYSROOT", root.path())
        .env("STILE_NEED_CAMERA", "1")
        .env("STILE_NEED_CHROMIUM", "1")
        .env("STILE_NEED_NEWMAN", "1")
        .env_remove("LIBCLANG_PATH")
        .env_remove("STILE_PG_BINDIR")
        .output()
        .expect("run ensure-deps --check");
    assert!(
        output.status.success(),
        "ensure-deps --check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn needs(files: &[&str], package: &str) -> bool {
    missing_on(files).iter().any(|p| p == package)
}

const PG: &[&str] = &[
    "/usr/lib/postgresql/15/bin/initdb*",
    "/usr/lib/postgresql/15/bin/postgres*",
    "/usr/lib/postgresql/15/bin/pg_isready*",
];

#[test]
fn an_empty_machine_needs_everything() {
    assert_eq!(
        missing_on(&[]),
        [
            "postgresql",
            "postgresql-contrib",
            "postgresql-15-auto-failover",
            "util-linux",
            "libclang-dev",
            "chromium",
            "fonts-noto-cjk",
            "nodejs",
            "npm"
        ]
    );
}

#[test]
fn auto_failover_is_the_tool_and_the_extension_of_the_server_in_use() {
    let package = "postgresql-16-auto-failover";
    let server = [
        "/usr/lib/postgresql/16/bin/initdb*",
        "/usr/lib/postgresql/16/bin/postgres*",
        "/usr/lib/postgresql/16/bin/pg_isready*",
    ];
    let mut all = server.to_vec();
    all.extend([
        "/usr/bin/pg_autoctl*",
        "/usr/share/postgresql/16/extension/pgautofailover.control",
        "/usr/lib/postgresql/16/lib/pgautofailover.so",
    ]);
    assert!(!needs(&all, package));
    // The tool without the extension, or the extension of another major version.
    assert!(needs(&all[..all.len() - 2], package), "no extension");
    let mut other = server.to_vec();
    other.extend([
        "/usr/bin/pg_autoctl*",
        "/usr/share/postgresql/15/extension/pgautofailover.control",
        "/usr/lib/postgresql/15/lib/pgautofailover.so",
    ]);
    assert!(
        needs(&other, package),
        "the extension of PostgreSQL 15 for a 16 server"
    );
}

#[test]
fn libclang_is_what_clang_sys_loads_not_a_look_alike() {
    let cases: &[(&[&str], bool)] = &[
        // the C++ interface library alone (the fresh-machine failure)
        (&["/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14"], true),
        (
            &[
                "/usr/lib/llvm-14/lib/libclang-cpp.so.14",
                "/usr/lib/llvm-14/lib/libclang-cpp.so",
            ],
            true,
        ),
        // static archives and unrelated libraries are not loadable
        (
            &[
                "/usr/lib/llvm-14/lib/libclang.a",
                "/usr/lib/llvm-14/lib/libclangBasic.a",
            ],
            true,
        ),
        (&["/usr/lib/x86_64-linux-gnu/libclang_rt.asan.so"], true),
        // what libclang-dev / libclang1-N really install
        (&["/usr/lib/llvm-14/lib/libclang.so"], false),
        (&["/usr/lib/llvm-14/lib/libclang-14.so.1"], false),
        (&["/usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6"], false),
        (&["/usr/lib/x86_64-linux-gnu/libclang.so.1"], false),
        (&["/usr/lib/llvm-16/lib/libclang-16.so"], false),
    ];
    for (files, missing) in cases {
        assert_eq!(needs(files, "libclang-dev"), *missing, "files {files:?}");
    }
}

#[test]
fn postgresql_needs_every_server_binary_the_testkit_runs() {
    assert!(!needs(PG, "postgresql"));
    assert!(needs(&PG[1..], "postgresql"), "no initdb");
    assert!(needs(&PG[..2], "postgresql"), "no pg_isready");
    // present but not executable
    assert!(needs(
        &[
            "/usr/lib/postgresql/15/bin/initdb",
            "/usr/lib/postgresql/15/bin/postgres",
            "/usr/lib/postgresql/15/bin/pg_isready"
        ],
        "postgresql"
    ));
    // pgbench must sit beside the server the bench cluster runs on
    assert!(needs(PG, "postgresql-contrib"));
    let mut with_pgbench = PG.to_vec();
    with_pgbench.push("/usr/lib/postgresql/15/bin/pgbench*");
    assert!(!needs(&with_pgbench, "postgresql-contrib"));
}

#[test]
fn browser_font_and_tools_are_the_real_files() {
    assert!(needs(&["/usr/bin/chromium"], "chromium"), "not executable");
    assert!(!needs(&["/usr/bin/chromium*"], "chromium"));
    assert!(needs(
        &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"],
        "fonts-noto-cjk"
    ));
    assert!(!needs(
        &["/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"],
        "fonts-noto-cjk"
    ));
    assert!(needs(&["/usr/bin/runuser"], "util-linux"), "not executable");
    assert!(!needs(&["/usr/sbin/runuser*"], "util-linux"));
    assert!(!needs(&["/usr/bin/npm*"], "npm"));
}
