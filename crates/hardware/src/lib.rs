//! The real hardware: what a station needs from the machine it runs on.
//!
//! - [`block`]: [`block::PathTarget`], a block device or a regular file as a
//!   `flashrack_target::Target`: identity pinning, exclusive direct I/O on
//!   aligned buffers, the guard run again on the opened descriptor, and the
//!   loop device's backing file dropped behind the read-back;
//! - [`udev`]: the real hotplug source (the udev monitor, on its own thread) and
//!   the real `flashrack_hotplug::DeviceAccess` (guard facts from sysfs, block
//!   targets, eject);
//! - [`usb_reset`]: the reset of a USB stick before its read-back (sysfs
//!   `authorized`, or `USBDEVFS_RESET`), and [`usb_reset::UsbStickTarget`], an
//!   attempt's block target that resets its stick and recognises it when it
//!   comes back.
//!
//! This is the only crate that links libudev; nothing of the `udev` crate leaves
//! it.
//!
//! Blocking calls: every method here blocks. Callers run them on dedicated threads,
//! never on async workers.
#![deny(missing_docs)]

pub mod block;
pub mod udev;
pub mod usb_reset;
