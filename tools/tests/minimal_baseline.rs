//! The repository's copy of the minimal redemption transaction (`bench/minimal/`) is the
//! project's reference (`../shared/bench/` beside the repository) byte for byte, whenever
//! the reference is there to compare with.

#[test]
fn the_copy_of_the_minimal_transaction_matches_the_reference() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let reference = root.join("../shared/bench");
    for name in ["pgbench_scan.sql", "pgbench_schema.sql"] {
        let copy = std::fs::read(root.join("bench/minimal").join(name)).expect("the copy");
        assert!(!copy.is_empty(), "{name} is empty");
        match std::fs::read(reference.join(name)) {
            Ok(original) => assert_eq!(
                copy, original,
                "bench/minimal/{name} differs from ../shared/bench/{name}"
            ),
            Err(_) => {
                println!("../shared/bench/{name} is not beside this checkout: nothing to compare")
            }
        }
    }
}
