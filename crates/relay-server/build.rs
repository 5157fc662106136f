//! Postgres tests run when `DATABASE_URL` is set at build time (`cfg(pg_tests)`); NATS tests
//! when a `nats-server` binary is found (`$NATS_SERVER`, `PATH`, `/usr/sbin`) or CI asks for
//! them (`RELAY_CI`, where a missing binary then fails them) (`cfg(nats_tests)`). Otherwise
//! they are compiled as `#[ignore]`d tests, listed by name, never silently passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rustc-check-cfg=cfg(nats_tests)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rerun-if-env-changed=NATS_SERVER");
    println!("cargo::rerun-if-env-changed=RELAY_CI");
    println!("cargo::rerun-if-env-changed=PATH");
    if std::env::var_os("DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=pg_tests");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let nats_server = std::env::var_os("NATS_SERVER").is_some_and(|p| !p.is_empty())
        || std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(Into::into))
            .any(|dir| dir.join("nats-server").is_file());
    if nats_server || std::env::var_os("RELAY_CI").is_some_and(|ci| !ci.is_empty()) {
        println!("cargo::rustc-cfg=nats_tests");
    }
}
