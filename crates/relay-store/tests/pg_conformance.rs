//! The store conformance suite, unchanged, on [`PgStore`], each case in a fresh database.
//! Runs when `DATABASE_URL` is set at build time; otherwise every case is listed as ignored.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use relay_store::testing::TestDatabase;

relay_store::conformance_tests!(
    [#[cfg_attr(not(pg_tests), ignore = "Postgres tests need DATABASE_URL")]]
    async {
        let db = TestDatabase::create().await;
        (Arc::new(db.store().await), db)
    }
);
