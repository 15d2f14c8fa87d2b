//! What the guard's unit tests share: a healthy stick's facts, a policy that maps
//! its port, requests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::{evaluate, DiskFacts, GuardPolicy, GuardRequest, Refusal};

/// A 16 GB USB stick in a mapped port, whole, unused.
pub(crate) fn healthy() -> DiskFacts {
    DiskFacts {
        dev_path: PathBuf::from("/dev/sdb"),
        kernel_name: "sdb".to_owned(),
        major: 8,
        minor: 16,
        diskseq: Some(9),
        is_partition: false,
        parent_disk: None,
        bus: Some("usb".to_owned()),
        port_path: Some("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0".to_owned()),
        size_bytes: 16_000_000_000,
        mounted: vec![],
        swap: vec![],
        holders: vec![],
        system_disk: None,
        read_only: false,
        loop_backings: Vec::new(),
    }
}

/// The default policy with [`healthy`]'s port mapped.
pub(crate) fn policy() -> GuardPolicy {
    GuardPolicy {
        mapped_ports: BTreeSet::from([healthy().port_path.unwrap()]),
        ..GuardPolicy::default()
    }
}

/// An armed run's request for an image of `image_size` bytes.
pub(crate) fn armed(image_size: u64) -> GuardRequest {
    GuardRequest {
        image_size,
        armed_run: true,
        explicit_operator_request: false,
    }
}

/// The refusal `evaluate` answers (panics when it accepts).
pub(crate) fn refused(facts: &DiskFacts, policy: &GuardPolicy, request: &GuardRequest) -> Refusal {
    evaluate(facts, policy, request).expect_err("should be refused")
}
