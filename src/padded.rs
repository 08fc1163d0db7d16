//! A value alone on its cache lines.
//!
//! Counters that every request writes (from whichever core it runs on) keep moving their cache
//! line between cores. Read-mostly fields that happen to share that line (the endpoint table's
//! pointer, the settings) would move with it and miss on every read; padding keeps them apart.

use std::ops::Deref;

/// `T` aligned to 128 bytes: two 64-byte lines, since the adjacent-line prefetcher of many
/// x86 cores moves lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
