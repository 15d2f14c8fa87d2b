//! The simulated rack: virtual sticks and ports, so that every station feature
//! runs, and is tested, without hardware.
//!
//! - [`sim`]: [`sim::SimStick`], a file-backed `flashrack_target::Target` with
//!   deterministic fault injection (slow, failing, lying about capacity,
//!   read-only, removed, stalled, hung), and [`sim::SimRack`];
//! - [`sim_hotplug`]: the simulated rack as a `flashrack_hotplug::HotplugSource`,
//!   with a control handle that plugs and pulls sticks.
//!
//! The sticks sit below the engine, behind the same seam as real devices, so tests,
//! the demo and the benchmarks of the simulated rack exercise the real engine.
//!
//! Blocking calls: every method of a stick blocks. Callers run them on dedicated
//! threads, never on async workers.
#![deny(missing_docs)]

pub mod sim;
pub mod sim_hotplug;
