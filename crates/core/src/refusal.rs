//! Why the target guard refused a device, as records and screens carry it.
//!
//! The guard itself (`flashrack-guard`) decides, with a rich `Refusal` whose
//! variants hold the facts (sizes, mount points …). What travels beyond it — to
//! the journal, the records, the reports and the dashboard — is the refusal's
//! stable [`RefusalCode`] and the sentence the operator reads, together a
//! [`GuardRefusal`]. The codes are a closed set: a report filters on them, never
//! on the words.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::stable_text;

/// The kind of a guard refusal: a closed set of stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Rule 1: a partition, not a whole disk.
    NotWholeDisk,
    /// Rule 1: on a bus the configuration does not allow.
    BusNotAllowed,
    /// Rule 2: in a port the configuration does not map.
    PortNotMapped,
    /// Rule 3: the device or a partition of it is mounted.
    Mounted,
    /// Rule 3: used as swap.
    Swap,
    /// Rule 3: other devices are stacked on it.
    Held,
    /// Rule 4: a mounted filesystem lives on it.
    SystemDisk,
    /// Rule 4: a loop device over a file flashrack keeps (a cached image, a
    /// raw image the cache reads in place, the records).
    ProtectedFile,
    /// Rule 5: larger than the configured maximum.
    TooLarge,
    /// Rule 5: smaller than the image.
    TooSmall,
    /// Rule 5: it reports a size of zero: no medium (a card reader without a card).
    NoMedium,
    /// Rule 6: no run is armed and the operator did not ask for the device.
    NotArmed,
    /// The device opened is not the one that was checked (another disk took
    /// its name).
    IdentityChanged,
    /// The exclusive open failed: something holds the device.
    Busy,
    /// The guard could not gather the facts it needs, so it did not write (it
    /// fails closed).
    CannotInspect,
}

impl RefusalCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [RefusalCode] = &[
        RefusalCode::NotWholeDisk,
        RefusalCode::BusNotAllowed,
        RefusalCode::PortNotMapped,
        RefusalCode::Mounted,
        RefusalCode::Swap,
        RefusalCode::Held,
        RefusalCode::SystemDisk,
        RefusalCode::ProtectedFile,
        RefusalCode::TooLarge,
        RefusalCode::TooSmall,
        RefusalCode::NoMedium,
        RefusalCode::NotArmed,
        RefusalCode::IdentityChanged,
        RefusalCode::Busy,
        RefusalCode::CannotInspect,
    ];

    /// The stable code stored in the records and shown in reports and the API
    /// (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NotWholeDisk => "not_whole_disk",
            RefusalCode::BusNotAllowed => "bus_not_allowed",
            RefusalCode::PortNotMapped => "port_not_mapped",
            RefusalCode::Mounted => "mounted",
            RefusalCode::Swap => "swap",
            RefusalCode::Held => "held",
            RefusalCode::SystemDisk => "system_disk",
            RefusalCode::ProtectedFile => "protected_file",
            RefusalCode::TooLarge => "too_large",
            RefusalCode::TooSmall => "too_small",
            RefusalCode::NoMedium => "no_medium",
            RefusalCode::NotArmed => "not_armed",
            RefusalCode::IdentityChanged => "identity_changed",
            RefusalCode::Busy => "busy",
            RefusalCode::CannotInspect => "cannot_inspect",
        }
    }
}

stable_text!(RefusalCode, as_str, RefusalCodeParseError, "a refusal code");

/// A guard refusal as it travels beyond the guard: its code, and the sentence
/// the operator reads. Serialized as `{"code": "too_large", "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuardRefusal {
    /// What kind of refusal it is.
    pub code: RefusalCode,
    /// The refusal in words, for people.
    pub message: String,
}

impl GuardRefusal {
    /// An exclusive open that failed with `EBUSY`: something the guard cannot see
    /// holds the device. The same code and sentence as the guard's own busy
    /// refusal, for the engine, which meets a busy target without the guard.
    pub fn busy(detail: impl fmt::Display) -> Self {
        GuardRefusal {
            code: RefusalCode::Busy,
            message: format!("the device is busy: {detail}"),
        }
    }
}

impl fmt::Display for GuardRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_round_trip_and_match_serde() {
        for &code in RefusalCode::ALL {
            assert_eq!(code.as_str().parse::<RefusalCode>(), Ok(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert!("too large".parse::<RefusalCode>().is_err());
    }

    #[test]
    fn a_guard_refusal_serializes_as_its_code_and_message() {
        let refusal = GuardRefusal {
            code: RefusalCode::TooLarge,
            message: "the device is too large".into(),
        };
        let json = serde_json::to_value(&refusal).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "code": "too_large", "message": "the device is too large" })
        );
        assert_eq!(
            serde_json::from_value::<GuardRefusal>(json).unwrap(),
            refusal
        );
        assert_eq!(refusal.to_string(), "the device is too large");
    }
}
