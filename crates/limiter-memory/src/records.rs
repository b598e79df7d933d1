//! [`MemoryRecords`]: the in-process adapter of [`ports::SharedRecords`], for one instance
//! (the adaptive limit and the breaker of a service without Redis keep their state here).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ports::records::check;
use ports::{RecordsError, SharedRecords, Swap, Versioned};

/// Shared records in a map behind a mutex: versions count up from 1 per name.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    records: Mutex<HashMap<String, Versioned>>,
}

impl MemoryRecords {
    /// Empty records.
    pub fn new() -> MemoryRecords {
        MemoryRecords::default()
    }
}

#[async_trait]
impl SharedRecords for MemoryRecords {
    async fn load(&self, name: &str) -> Result<Option<Versioned>, RecordsError> {
        check(name, "")?;
        // No section leaves the map half-updated, so a poisoned lock is recovered.
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(records.get(name).cloned())
    }

    async fn swap(
        &self,
        name: &str,
        expected: Option<u64>,
        value: &str,
    ) -> Result<Swap, RecordsError> {
        check(name, value)?;
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let current = records.get(name);
        if current.map(|c| c.version) != expected {
            return Ok(Swap::Conflict(current.cloned()));
        }
        let version = expected.unwrap_or(0) + 1;
        records.insert(
            name.to_owned(),
            Versioned {
                version,
                value: value.to_owned(),
            },
        );
        Ok(Swap::Stored(version))
    }
}
