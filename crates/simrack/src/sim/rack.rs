//! A rack of numbered sticks in one directory, cleaned up on drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::spec::SimStickSpec;
use super::stick::SimStick;

/// A set of simulated sticks in one directory, numbered "S01", "S02", ...
///
/// Dropping the rack removes every stick (waking any stalled call) and deletes the
/// backing files it created, and the directory too if it created it.
#[derive(Debug)]
pub struct SimRack {
    dir: PathBuf,
    created_dir: bool,
    sticks: Vec<SimStick>,
}

impl SimRack {
    /// Creates one stick per spec under `dir` (created if missing). A spec with an
    /// empty name is named after its position ("S01" for the first); the backing
    /// file is `<name>.img` and must not exist yet.
    pub fn create(
        dir: impl AsRef<Path>,
        specs: impl IntoIterator<Item = SimStickSpec>,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let created_dir = !dir.exists();
        if created_dir {
            fs::create_dir_all(&dir)?;
        }
        // Built in place so that an error part-way cleans up what was created.
        let mut rack = Self {
            dir,
            created_dir,
            sticks: Vec::new(),
        };
        for (index, mut spec) in specs.into_iter().enumerate() {
            if spec.name.is_empty() {
                spec.name = format!("S{:02}", index + 1);
            }
            if spec.name.contains('/') || spec.name.starts_with('.') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("stick name {:?} is not a file name", spec.name),
                ));
            }
            let path = rack.dir.join(format!("{}.img", spec.name));
            rack.sticks.push(SimStick::create_with(spec, &path, true)?);
        }
        Ok(rack)
    }

    /// The directory holding the backing files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sticks, in the order of their specs.
    pub fn sticks(&self) -> &[SimStick] {
        &self.sticks
    }

    /// The stick with this name.
    pub fn stick(&self, name: &str) -> Option<&SimStick> {
        self.sticks.iter().find(|stick| stick.inner().name == name)
    }

    /// How many sticks the rack has.
    pub fn len(&self) -> usize {
        self.sticks.len()
    }

    /// Whether the rack has no sticks.
    pub fn is_empty(&self) -> bool {
        self.sticks.is_empty()
    }
}

impl Drop for SimRack {
    fn drop(&mut self) {
        // Cleanup is best effort: a file already gone is not worth a panic in drop.
        for stick in &self.sticks {
            stick.remove();
            let _ = fs::remove_file(stick.path());
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}
