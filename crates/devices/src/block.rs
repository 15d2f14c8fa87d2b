//! Block devices and regular files as targets.
