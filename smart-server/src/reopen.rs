//! Tests only: reopening a sled database in the same process.
//!
//! sled lets go of its lock file only once its background I/O threads have finished with the previous
//! handle, a moment after the last drop. A test that reopens a store in the same process waits for
//! that (bounded), as a restarted server never has to.

use std::thread;
use std::time::{Duration, Instant};

/// Call `open` until it stops failing because the previous handle still holds the lock (at most
/// 10 s); any other error, or the lock still held then, is returned.
pub(crate) fn retrying_lock<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(e) if e.to_string().contains("acquire lock") && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}
