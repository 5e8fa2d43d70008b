//! Locking that survives a panicking holder.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: every critical section in this crate leaves its data
/// consistent (an assignment, an insert, a removal, a `retain`), so one connection
/// thread's panic must not take the whole server with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
