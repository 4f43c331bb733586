//! The integration suite, one binary (one link of the crate and the AWS
//! SDK instead of one per file). Each file under tests/ is a module named
//! after it: `cargo test core_hostile::` runs one file, `cargo test NAME` one
//! test. The harness modules (`common`, `db_common`, `s3_common`,
//! `sched_common`) are shared by all of them.

#[path = "common/mod.rs"]
mod common;
#[path = "db_common/mod.rs"]
mod db_common;
#[path = "s3_common/mod.rs"]
mod s3_common;
#[path = "sched_common/mod.rs"]
mod sched_common;

#[path = "browse.rs"]
mod browse;
#[path = "core_bad_input.rs"]
mod core_bad_input;
#[path = "core_hostile.rs"]
mod core_hostile;
#[path = "core_roundtrip.rs"]
mod core_roundtrip;
#[path = "db_mysql.rs"]
mod db_mysql;
#[path = "db_postgres.rs"]
mod db_postgres;
#[path = "db_sqlite.rs"]
mod db_sqlite;
#[path = "deployment.rs"]
mod deployment;
#[path = "drill.rs"]
mod drill;
#[path = "examples.rs"]
mod examples;
#[path = "isolation.rs"]
mod isolation;
#[path = "operator.rs"]
mod operator;
#[path = "private_files.rs"]
mod private_files;
#[path = "prune.rs"]
mod prune;
#[path = "repack.rs"]
mod repack;
#[path = "s3_cli.rs"]
mod s3_cli;
#[path = "s3_faults.rs"]
mod s3_faults;
#[path = "scheduling.rs"]
mod scheduling;
#[path = "secrets.rs"]
mod secrets;
#[path = "source_read.rs"]
mod source_read;
#[path = "status.rs"]
mod status;
#[path = "storage_suite.rs"]
mod storage_suite;
#[path = "trust.rs"]
mod trust;
