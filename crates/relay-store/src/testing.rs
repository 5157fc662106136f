//! A fresh Postgres database per test (features `conformance` and `postgres`).
//!
//! [`TestDatabase::create`] makes a uniquely named database on the server of `DATABASE_URL`,
//! migrates it, and drops it (with `FORCE`) when the guard is dropped, even if the test
//! panicked. Test support: failures here panic with a message saying what to fix.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::postgres::{MIGRATOR, PgStore, PgStoreOptions};

/// A database that exists for the lifetime of this guard.
pub struct TestDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

/// `DATABASE_URL`, or a panic explaining that Postgres tests need it.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("Postgres tests need DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    })
}

impl TestDatabase {
    /// Creates and migrates a fresh database.
    pub async fn create() -> Self {
        let base = database_url();
        let admin =
            PgConnectOptions::from_str(&base).expect("DATABASE_URL is a valid Postgres URL");
        let name = format!("relay_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!("cannot reach Postgres at DATABASE_URL ({e}); is it running?")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let url = with_database(&base, &name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(admin.clone().database(&name))
            .await
            .expect("connect to the test database");
        MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply to a fresh database");
        pool.close().await;
        Self { admin, name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store on this database.
    pub async fn store(&self) -> PgStore {
        self.store_with(PgStoreOptions::default()).await
    }

    /// A store on this database, with options.
    pub async fn store_with(&self, options: PgStoreOptions) -> PgStore {
        PgStore::connect_with(&self.url, options)
            .await
            .expect("connect PgStore to the test database")
    }

    /// An administrative connection to the server (not to this database).
    pub async fn admin(&self) -> sqlx::PgConnection {
        self.admin.connect().await.expect("admin connection")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced_keeping_the_rest() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
