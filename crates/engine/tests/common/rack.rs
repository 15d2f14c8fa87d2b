//! The simulated rack's sticks as the engine's targets. Kept out of `common`
//! because the hardware crate's loop-device tests share `common` and do not link
//! the simulated rack.

use std::sync::Arc;

use flashrack_core::TargetId;
use flashrack_simrack::sim::SimRack;
use flashrack_target::Target;

/// The rack's sticks as the engine's targets, named as the sticks are.
pub fn targets(rack: &SimRack) -> Vec<(TargetId, Arc<dyn Target>)> {
    rack.sticks()
        .iter()
        .map(|s| {
            (
                TargetId::new(s.name()),
                Arc::new(s.clone()) as Arc<dyn Target>,
            )
        })
        .collect()
}
