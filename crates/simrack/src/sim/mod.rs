//! The simulated rack: file-backed virtual sticks with deterministic faults.
//!
//! A [`SimStick`] is a [`Target`] whose "medium" is a sparse backing file. It keeps
//! the contract a real block device keeps (aligned offsets and buffers, nothing
//! past the claimed capacity, one writer at a time, every reader a fresh handle on
//! the file) and can misbehave in the ways real sticks do, as configured by a
//! [`SimStickSpec`]:
//! - **slow**: independent write and read speed limits, paced by sleeping;
//! - **failing**: a write error once N bytes have been written; a bad block
//!   that fails every write covering it, as a whole; a read error once N bytes
//!   have been read back;
//! - **corrupting**: chosen bytes come back flipped on read-back while the medium
//!   holds the right data;
//! - **lying about capacity**: claims more than it stores, wrapping or dropping
//!   writes past its real size ([`FakeMode`]);
//! - **caching**: a volatile cache of the last N bytes written answers their
//!   read-back until [`SimStick::reset`] (a power cycle) drops it; what is left
//!   is what the medium really got ([`CacheMode`]): a fake stick's lost bytes
//!   hidden by the cache, or a cache window that never reached the medium;
//! - **read-only**, **too small** (a small claim);
//! - **removed**: by [`SimStick::remove`] from any thread, or scripted after N bytes
//!   written or read back;
//! - **stalled**: a call stops responding after N bytes until the stick is removed,
//!   [`SimStick::release`]d or dropped;
//! - **hung**: a call never returns after N bytes, whatever happens to the stick
//!   (removal, the last handle dropped), until [`SimStick::release`] or the end of
//!   the process: a `write()` or `read()` stuck in the kernel, which no one can
//!   cancel.
//!
//! Byte counts that trigger faults ("after N bytes") are totals over the stick's life,
//! across every writer (respectively reader) opened on it, so the engine's capacity
//! probe counts too. A call that crosses a threshold first puts the bytes before the
//! threshold on the medium, like a short write of a real device.
//!
//! [`SimCounters`] tell how many bytes really went to and came from the backing file,
//! so tests and benchmarks can check that verification read the medium.
//!
//! [`SimRack`] creates numbered sticks ("S01", "S02", ...) in a directory and cleans
//! up after itself.
//!
//! Concurrency: a stick is shared through cheap clones ([`SimStick`] is an `Arc`);
//! all its handles share one state behind a `Mutex` and one `Condvar`, which pacing
//! sleeps and stalls wait on so that removal wakes them at once. No call ever spins.
//!
//! Layout, a module per job:
//! - `spec`: [`SimStickSpec`], [`FakeCapacity`], [`FakeMode`]: what a stick is
//!   and how it misbehaves, validated before a stick is made;
//! - `stick`: [`SimStick`] (the [`Target`]), its
//!   shared state and [`SimCounters`];
//! - `faults`: thresholds that fire (removal, stall, hang, error) and bad blocks:
//!   how a call is cut into pieces;
//! - `pacing`: the speed limits;
//! - `medium`: the backing file: fake-capacity mapping, corrupted bytes,
//!   alignment as `O_DIRECT` checks it;
//! - `cache`: the volatile cache in front of the medium, and the reset that
//!   drops it;
//! - `transfer`: the writer and the reader, which move a call piece by piece
//!   through the three above;
//! - `rack`: [`SimRack`], numbered sticks in one directory.

#[cfg(doc)]
use flashrack_target::Target;

mod cache;
mod faults;
mod medium;
mod pacing;
mod rack;
mod spec;
mod stick;
mod transfer;

pub use rack::SimRack;
pub use spec::{CacheMode, FakeCapacity, FakeMode, SimStickSpec, VolatileCache};
pub use stick::{SimCounters, SimStick};

#[cfg(test)]
mod tests;
