//! What an audit (`flashrack verify`: read sticks back, write nothing) needs
//! beyond a flash: its block devices judged by the guard's rules for reading
//! (`guard::read_refusals`, as a master's capture is: a whole disk on an
//! allowed bus, nothing of it mounted, swapped or held, not a system disk, a
//! medium), and held open read-only and exclusively while they are read back,
//! so that nobody mounts one meanwhile. Its files must exist: an audit never
//! creates or grows one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flashrack_guard::{read_refusals, DiskFacts, DiskIdentity, GuardPolicy};
use flashrack_hardware::block::PathTarget;

/// Why a target cannot be audited.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The guard's rules for reading refuse the device.
    #[error("{} cannot be audited: {}", device.display(), reasons.join("; "))]
    Refused {
        /// The device.
        device: PathBuf,
        /// Every rule it fails, in words.
        reasons: Vec<String>,
    },
    /// The device could not be inspected or opened.
    #[error("{}: {what}", device.display())]
    Device {
        /// The device.
        device: PathBuf,
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another disk answers under the name than the one judged.
    #[error("{} changed between the check and the open: not audited", device.display())]
    IdentityChanged {
        /// The device.
        device: PathBuf,
    },
    /// A file target that is not there (an audit creates nothing).
    #[error("{}: no such file to audit (an audit reads what is there and creates nothing)", path.display())]
    NoSuchFile {
        /// The file as named.
        path: PathBuf,
    },
}

/// The block devices of an audit, each open read-only and exclusively until
/// this is dropped.
#[derive(Debug)]
pub struct AuditClaims {
    /// Held, not read: the exclusive open keeps the devices from being mounted
    /// (or claimed by another writer) while they are read back.
    _held: Vec<File>,
}

/// Judges the targets of an audit named in `specs` and claims its block
/// devices. Simulated sticks (`sim:`) need nothing; a path under `/dev` that is
/// not a block device is left to the targets' parser, which names the mistake.
pub fn claim(specs: &[String], policy: &GuardPolicy) -> Result<AuditClaims, AuditError> {
    let mut held = Vec::new();
    for spec in specs {
        if spec.starts_with("sim:") {
            continue;
        }
        let path = Path::new(spec);
        if PathTarget::is_block_device(path) {
            held.push(claim_device(path, policy)?);
        } else if !path.starts_with("/dev") && !path.is_file() {
            return Err(AuditError::NoSuchFile {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(AuditClaims { _held: held })
}

fn claim_device(device: &Path, policy: &GuardPolicy) -> Result<File, AuditError> {
    let judge = |facts: &DiskFacts| -> Result<(), AuditError> {
        let refusals = read_refusals(facts, policy);
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(AuditError::Refused {
                device: device.to_path_buf(),
                reasons: refusals.iter().map(ToString::to_string).collect(),
            })
        }
    };
    let failed = |what: &'static str| {
        move |e: &dyn std::fmt::Display| AuditError::Device {
            device: device.to_path_buf(),
            what,
            source: io::Error::other(e.to_string()),
        }
    };
    let facts = DiskFacts::inspect(device).map_err(|e| failed("cannot inspect it")(&e))?;
    // Judged before it is opened: a system disk is never opened at all.
    judge(&facts)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(device)
        .map_err(|source| AuditError::Device {
            device: device.to_path_buf(),
            what: "cannot open it read-only and exclusively (mounted or in use?)",
            source,
        })?;
    let opened =
        DiskIdentity::of_file(&file, device).map_err(|e| failed("cannot identify it")(&e))?;
    if opened != facts.identity() {
        return Err(AuditError::IdentityChanged {
            device: device.to_path_buf(),
        });
    }
    judge(&DiskFacts::of_opened(&file, device).map_err(|e| failed("cannot inspect it")(&e))?)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_there_is_not_audited_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("stick.img");
        let error = claim(&[missing.display().to_string()], &GuardPolicy::default()).unwrap_err();
        assert!(matches!(error, AuditError::NoSuchFile { .. }), "{error}");
        assert!(error.to_string().contains("creates nothing"));
        assert!(!missing.exists());
        // A file that is there, and a simulated stick, need no claim.
        std::fs::write(&missing, b"x").unwrap();
        claim(
            &[missing.display().to_string(), "sim:a".into()],
            &GuardPolicy::default(),
        )
        .unwrap();
    }
}
