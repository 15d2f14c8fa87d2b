//! The simulated rack.
