//! The store conformance suite on [`MemoryStore`].

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use relay_store::MemoryStore;

relay_store::conformance_tests!(async { Arc::new(MemoryStore::new()) });
