//! A bootable USB layout built once from a UEFI-bootable installer ISO that
//! would not boot written raw (a Windows installer ISO: no partition table):
//! a GPT disk image with one EFI system partition, FAT32, holding the ISO's
//! files. A file larger than FAT32 holds (4 GiB − 1 byte) is split when it is
//! a Windows image (`sources/install.wim` into `install.swm`,
//! `install2.swm` … with `wimlib-imagex split`, which Windows Setup reads in
//! place of the WIM) and refused otherwise. The layout is imported into the
//! cache like any other image (then fanned out and verified byte for byte),
//! and remembered: building the same ISO again answers the cached layout.
//!
//! Built with Debian's tools, run as programs: `xorriso` (extracts the ISO's
//! ISO 9660 / Joliet / Rock Ridge tree when it has no UDF tree), `sfdisk`
//! (the GPT), `mkfs.vfat` (FAT32, `--invariant`), `mcopy` from mtools (copies
//! into the image file at the partition's offset, without mounting) and
//! `wimlib-imagex` (wimtools). A missing program is an error that names its
//! package. An ISO with a UDF tree (every Windows ISO: Microsoft's keep only
//! a README on their ISO 9660 side) is copied out of that tree with
//! flashrack's own UDF reader (`flashrack_inspect::udf_tree`), which nothing
//! in Debian offers in user space.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashrack_core::{BuildOrigin, ByteSize, Provenance, Sha256Digest};
use flashrack_image::{CachedImage, ImageCache};

use crate::AppError;

/// The largest file FAT32 holds.
pub const FAT32_MAX_FILE: u64 = (4 << 30) - 1;

/// Where a layout is built from, and how.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The name of the built image in the cache (`win11-usb.img`).
    pub name: String,
    /// Files larger than this are split or refused: [`FAT32_MAX_FILE`]
    /// (tests give less, to split a small WIM).
    pub max_file_size: u64,
    /// The largest image the cache takes (the guard's largest target).
    pub max_image_size: ByteSize,
}

/// The method a layout is built by, in words (the image's provenance says
/// it, with the WIM's split where there was one).
pub const METHOD: &str =
    "bootable USB layout: GPT, one FAT32 EFI system partition with the ISO's files";

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    /// Copying the ISO's files out of it.
    Extracting,
    /// Splitting a Windows image too large for FAT32 (wimlib).
    Splitting,
    /// Making the GPT and the FAT32 and copying the files in.
    LayingOut,
    /// Importing the layout into the cache.
    Importing,
}

/// A built (or remembered) layout.
#[derive(Debug)]
pub struct Built {
    /// The layout, in the cache.
    pub image: CachedImage,
    /// Whether it was built before and taken from the cache.
    pub reused: bool,
    /// The files split into parts (`sources/install.wim` → 3 parts).
    pub split: Vec<(String, usize)>,
}

/// Why a layout cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image is not an ISO.
    #[error("image {0} is not an ISO 9660 / UDF image: there is nothing to lay out")]
    NotAnIso(String),
    /// A hybrid ISO boots written raw: nothing to build.
    #[error(
        "image {0} already boots written raw (it carries a partition table): flash it as it is"
    )]
    AlreadyBootable(String),
    /// The ISO has no UEFI loader at the removable-media path.
    #[error("image {0} has no UEFI loader at EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI): a FAT32 layout of its files would not boot")]
    NoUefiLoader(String),
    /// The ISO's UDF tree cannot be read.
    #[error("the UDF tree of image {name} cannot be read: {why}")]
    Udf {
        /// The image.
        name: String,
        /// Why.
        why: String,
    },
    /// A file too large for FAT32 that cannot be split.
    #[error("{path} is {size} bytes, more than FAT32 holds ({max} bytes), and only a Windows image (install.wim) can be split")]
    TooLarge {
        /// The file, relative to the ISO's root.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A program failed or is missing.
    #[error("{program} failed: {detail}")]
    Tool {
        /// The program.
        program: String,
        /// Its error output, or why it could not run.
        detail: String,
    },
    /// A file of the build could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// The package that brings `program`, for its error message.
fn package(program: &str) -> &'static str {
    match program {
        "xorriso" => "xorriso",
        "sfdisk" => "fdisk",
        "mkfs.vfat" => "dosfstools",
        "mcopy" => "mtools",
        "wimlib-imagex" => "wimtools",
        _ => "its package",
    }
}

fn tool(program: &str, args: &[&std::ffi::OsStr], stdin: Option<&str>) -> Result<(), BuildError> {
    use std::io::Write;
    let mut command = Command::new(program);
    command
        .args(args)
        // mtools checks that a FAT's geometry matches a floppy's otherwise.
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let failed = |detail: String| BuildError::Tool {
        program: program.to_string(),
        detail,
    };
    let mut child = command.spawn().map_err(|e| {
        failed(format!(
            "cannot run it ({e}); install Debian's {}",
            package(program)
        ))
    })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where built layouts are remembered: `<data_dir>/bootable/<iso sha256>`
/// holds the layout's sha256.
fn memo(data_dir: &Path, iso: Sha256Digest) -> PathBuf {
    data_dir.join("bootable").join(iso.to_hex())
}

/// Builds (or finds, when built before) the bootable layout of `iso`.
/// Blocking: runs programs and copies the ISO's files.
pub fn build_bootable(
    cache: &ImageCache,
    data_dir: &Path,
    iso: &CachedImage,
    request: &BuildRequest,
) -> Result<Built, AppError> {
    build_bootable_with(cache, data_dir, iso, request, &|_| {})
}

/// [`build_bootable`], telling `stage` where it is. The built image's
/// provenance says what it was built from, how and when
/// ([`Provenance::built`]): the image records and reports carry it.
pub fn build_bootable_with(
    cache: &ImageCache,
    data_dir: &Path,
    iso: &CachedImage,
    request: &BuildRequest,
    stage: &dyn Fn(BuildStage),
) -> Result<Built, AppError> {
    let name = iso.meta.original_name.clone();
    // The cache inspects every entry it reads; none means it could not.
    let Some(info) = iso.meta.inspection.clone() else {
        return Err(BuildError::NotAnIso(name).into());
    };
    let Some(iso_info) = info.iso.as_ref() else {
        return Err(BuildError::NotAnIso(name).into());
    };
    let label = volume_label(
        iso_info
            .volume_id
            .as_deref()
            .or(iso_info.udf_volume_id.as_deref()),
    );
    if info.table.is_some() || iso_info.hybrid {
        return Err(BuildError::AlreadyBootable(name).into());
    }
    let remembered = memo(data_dir, iso.sha256());
    if let Ok(text) = fs::read_to_string(&remembered) {
        if let Ok(image) = cache.find(text.trim()) {
            return Ok(Built {
                image,
                reused: true,
                split: Vec::new(),
            });
        }
    }
    let parent = data_dir.join("bootable");
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    // In the data directory (the cache's file system), gone when dropped.
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&parent)
        .map_err(io("create a directory in", &parent))?;
    let tree = work.path().join("tree");
    stage(BuildStage::Extracting);
    if iso_info.udf {
        // The UDF tree is the whole one where there is one (Windows ISOs
        // keep their files there only, the ISO 9660 side holds a README).
        extract_udf(&iso.path, &name, &tree)?;
    } else {
        tool(
            "xorriso",
            &[
                "-osirrox".as_ref(),
                "on".as_ref(),
                // Joliet's mixed-case long names where there is no Rock Ridge.
                "-joliet".as_ref(),
                "on".as_ref(),
                "-indev".as_ref(),
                iso.path.as_os_str(),
                "-extract".as_ref(),
                "/".as_ref(),
                tree.as_os_str(),
            ],
            None,
        )?;
        // xorriso keeps the ISO's read-only modes: the build changes the tree.
        make_writable(&tree)?;
    }
    let files = walk(&tree)?;
    let find = |want: &str| {
        files
            .iter()
            .find(|(rel, _)| rel.eq_ignore_ascii_case(want))
            .cloned()
    };
    if find("efi/boot/bootx64.efi").is_none() && find("efi/boot/bootaa64.efi").is_none() {
        return Err(BuildError::NoUefiLoader(name).into());
    }
    let mut split = Vec::new();
    for (rel, size) in &files {
        if *size <= request.max_file_size {
            continue;
        }
        if !rel.eq_ignore_ascii_case("sources/install.wim") {
            return Err(BuildError::TooLarge {
                path: rel.clone(),
                size: *size,
                max: request.max_file_size,
            }
            .into());
        }
        stage(BuildStage::Splitting);
        let wim = tree.join(rel);
        let swm = wim.with_file_name("install.swm");
        // wimlib's part size is in MiB; parts may exceed it by a resource
        // that cannot be split, so ask for a margin below the limit.
        let part_mib = (request.max_file_size / (1 << 20))
            .saturating_sub(16)
            .max(1);
        tool(
            "wimlib-imagex",
            &[
                "split".as_ref(),
                wim.as_os_str(),
                swm.as_os_str(),
                part_mib.to_string().as_ref(),
            ],
            None,
        )?;
        fs::remove_file(&wim).map_err(io("remove", &wim))?;
        let parts = fs::read_dir(wim.parent().unwrap_or(&tree))
            .map_err(io("list", &tree))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                let size = e.metadata().ok()?.len();
                (name.starts_with("install") && name.ends_with(".swm")).then_some(size)
            })
            .collect::<Vec<_>>();
        if let Some(&big) = parts.iter().find(|&&s| s > request.max_file_size) {
            return Err(BuildError::TooLarge {
                path: "sources/install.swm".into(),
                size: big,
                max: request.max_file_size,
            }
            .into());
        }
        split.push((rel.clone(), parts.len()));
    }

    stage(BuildStage::LayingOut);
    // The layout: 1 MiB for the GPT, the partition, 1 MiB for the backup GPT.
    let content: u64 = walk(&tree)?
        .iter()
        .map(|(_, s)| s.div_ceil(4096) * 4096)
        .sum();
    const MIB: u64 = 1 << 20;
    // FAT32 wants at least 65525 clusters (32 MiB with 512-byte clusters);
    // a tenth more than the files for the FATs and directories.
    let partition = (content + content / 10 + 40 * MIB).div_ceil(MIB) * MIB;
    let image_name = file_name(&request.name);
    let layout = work.path().join(&image_name);
    let file = fs::File::create(&layout).map_err(io("create", &layout))?;
    file.set_len(partition + 2 * MIB)
        .map_err(io("size", &layout))?;
    drop(file);
    let sectors = partition / 512;
    tool(
        "sfdisk",
        &["--quiet".as_ref(), layout.as_os_str()],
        Some(&format!(
            "label: gpt\nstart=2048, size={sectors}, type=uefi, name=\"{}\"\n",
            label
        )),
    )?;
    tool(
        "mkfs.vfat",
        &[
            "-F".as_ref(),
            "32".as_ref(),
            "--invariant".as_ref(),
            "-n".as_ref(),
            label.as_ref(),
            "--offset".as_ref(),
            "2048".as_ref(),
            layout.as_os_str(),
            (partition / 1024).to_string().as_ref(),
        ],
        None,
    )?;
    let target = format!("{}@@{}", layout.display(), MIB);
    let mut entries: Vec<PathBuf> = fs::read_dir(&tree)
        .map_err(io("list", &tree))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    if !entries.is_empty() {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["-s".as_ref(), "-m".as_ref(), "-i".as_ref(), target.as_ref()];
        args.extend(entries.iter().map(|p| p.as_os_str()));
        args.push("::/".as_ref());
        tool("mcopy", &args, None)?;
    }
    stage(BuildStage::Importing);
    let image = crate::images::import(cache, &layout, None, request.max_image_size)?.image;
    let method = match split.as_slice() {
        [] => METHOD.to_string(),
        split => format!(
            "{METHOD}; {} (wimlib)",
            split
                .iter()
                .map(|(file, parts)| format!("{file} split into {parts} parts"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let origin = BuildOrigin {
        from_sha256: iso.sha256(),
        from_name: name.clone(),
        method,
        built_at: flashrack_report::format_time(now),
    };
    let image = cache.set_provenance(image, Provenance::built(origin))?;
    fs::write(&remembered, image.sha256().to_hex()).map_err(io("write", &remembered))?;
    Ok(Built {
        image,
        reused: false,
        split,
    })
}

/// The station's builds for the web side (`flashrack_web::Builds`): each
/// runs on a blocking thread; its stage and outcome are kept in memory for
/// `GET /api/v1/images/builds`. One build per ISO at a time: asking again
/// while one runs answers that one.
pub struct BuildService {
    cache: ImageCache,
    data_dir: PathBuf,
    /// The largest image the cache takes (the guard's largest target).
    max_image_size: ByteSize,
    runtime: tokio::runtime::Handle,
    /// Every build started, oldest first. A `std` mutex: held only to copy
    /// or update a view, never across an await or a build.
    views: std::sync::Arc<std::sync::Mutex<Vec<BuildView>>>,
}

/// One build as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct BuildView {
    id: u64,
    /// The ISO's sha256 and name.
    source: Sha256Digest,
    source_name: String,
    /// The built image's name.
    name: String,
    /// `building`, `built` or `failed`.
    state: &'static str,
    stage: Option<BuildStage>,
    method: &'static str,
    started_at: String,
    finished_at: Option<String>,
    image: Option<Sha256Digest>,
    size: Option<u64>,
    reused: Option<bool>,
    split: Vec<serde_json::Value>,
    provenance: Option<Provenance>,
    error: Option<String>,
}

fn now_text() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    flashrack_report::format_time(ms)
}

impl BuildService {
    /// Builds into `cache`, remembering layouts under `data_dir`; images
    /// larger than `max_image_size` are refused. Tasks run on the current
    /// tokio runtime.
    pub fn new(cache: ImageCache, data_dir: PathBuf, max_image_size: ByteSize) -> Self {
        Self {
            cache,
            data_dir,
            max_image_size,
            runtime: tokio::runtime::Handle::current(),
            views: Default::default(),
        }
    }

    fn update(views: &std::sync::Mutex<Vec<BuildView>>, id: u64, f: impl FnOnce(&mut BuildView)) {
        let mut views = views.lock().expect("no panic while held");
        if let Some(view) = views.iter_mut().find(|v| v.id == id) {
            f(view);
        }
    }

    fn start_build(&self, start: flashrack_web::BuildStart) -> Result<serde_json::Value, String> {
        let iso = start.iso;
        let id = {
            let mut views = self.views.lock().expect("no panic while held");
            if let Some(running) = views
                .iter()
                .find(|v| v.state == "building" && v.source == iso.sha256())
            {
                return Ok(serde_json::to_value(running).unwrap_or_default());
            }
            let id = views.len() as u64 + 1;
            views.push(BuildView {
                id,
                source: iso.sha256(),
                source_name: iso.meta.original_name.clone(),
                name: start.name.clone(),
                state: "building",
                stage: None,
                method: METHOD,
                started_at: now_text(),
                finished_at: None,
                image: None,
                size: None,
                reused: None,
                split: Vec::new(),
                provenance: None,
                error: None,
            });
            id
        };
        let request = BuildRequest {
            name: start.name,
            max_file_size: FAT32_MAX_FILE,
            max_image_size: self.max_image_size,
        };
        let cache = self.cache.clone();
        let data_dir = self.data_dir.clone();
        let views = self.views.clone();
        let stage_views = self.views.clone();
        self.runtime.spawn_blocking(move || {
            let stage = |stage: BuildStage| {
                Self::update(&stage_views, id, |v| v.stage = Some(stage));
            };
            let outcome = build_bootable_with(&cache, &data_dir, &iso, &request, &stage);
            Self::update(&views, id, |v| {
                v.finished_at = Some(now_text());
                match outcome {
                    Ok(built) => {
                        // A fresh build ended when its provenance says: the
                        // view and the records agree to the millisecond.
                        if let (false, Some(origin)) = (
                            built.reused,
                            built.image.meta.provenance.as_ref().and_then(|p| p.built.as_ref()),
                        ) {
                            v.finished_at = Some(origin.built_at.clone());
                        }
                        v.state = "built";
                        v.image = Some(built.image.sha256());
                        v.size = Some(built.image.size());
                        v.reused = Some(built.reused);
                        v.split = built
                            .split
                            .iter()
                            .map(|(file, parts)| serde_json::json!({"file": file, "parts": parts}))
                            .collect();
                        v.provenance = built.image.meta.provenance.clone();
                    }
                    Err(error) => {
                        tracing::warn!(%error, iso = %iso.sha256().short(), "bootable build failed");
                        v.state = "failed";
                        v.error = Some(error_words(&error));
                    }
                }
            });
        });
        let views = self.views.lock().expect("no panic while held");
        let view = views.iter().find(|v| v.id == id).expect("just added");
        Ok(serde_json::to_value(view).unwrap_or_default())
    }
}

/// An error with its causes, for the operator: "image x has no UEFI loader
/// …", "mcopy failed: …".
fn error_words(error: &AppError) -> String {
    let mut words = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        words.push_str(": ");
        words.push_str(&cause.to_string());
        source = cause.source();
    }
    words
}

impl flashrack_web::Builds for BuildService {
    fn start(
        &self,
        request: flashrack_web::BuildStart,
    ) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(std::future::ready(self.start_build(request)))
    }

    fn list(&self) -> serde_json::Value {
        let views = self.views.lock().expect("no panic while held");
        serde_json::to_value(views.iter().rev().collect::<Vec<_>>()).unwrap_or_default()
    }
}

impl From<BuildError> for AppError {
    fn from(error: BuildError) -> Self {
        AppError::Bootable(Box::new(error))
    }
}

/// A FAT label (11 characters, upper case, no spaces at the ends) from the
/// ISO's volume id.
fn volume_label(volume_id: Option<&str>) -> String {
    let label: String = volume_id
        .unwrap_or("BOOT")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(11)
        .collect::<String>()
        .to_ascii_uppercase();
    if label.is_empty() {
        "BOOT".into()
    } else {
        label
    }
}

/// A file name for the layout from the name asked for (no directories,
/// nothing hidden).
fn file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "bootable.img".into()
    } else {
        cleaned
    }
}

/// Every regular file under `root`: its path relative to `root` (with `/`)
/// and its size.
fn walk(root: &Path) -> Result<Vec<(String, u64)>, BuildError> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let kind = entry.file_type().map_err(io("inspect", &entry.path()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let size = entry
                    .metadata()
                    .map_err(io("inspect", &entry.path()))?
                    .len();
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                out.push((rel, size));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The most files and directories copied out of a UDF tree (a Windows ISO
/// holds about a thousand).
const MAX_UDF_ENTRIES: usize = 200_000;

/// Copies the UDF tree of the ISO at `iso` into `tree`, with flashrack's own
/// UDF reader (`flashrack_inspect::udf_tree`: no program reads UDF in user
/// space here).
fn extract_udf(iso: &Path, name: &str, tree: &Path) -> Result<(), BuildError> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let image = fs::File::open(iso).map_err(io("open", iso))?;
    let entries =
        flashrack_inspect::udf_tree(&image, MAX_UDF_ENTRIES).map_err(|why| BuildError::Udf {
            name: name.to_string(),
            why,
        })?;
    fs::create_dir_all(tree).map_err(io("create", tree))?;
    let mut buf = vec![0u8; 1 << 20];
    for entry in entries {
        // Names with `/`, `.` or `..` are not taken from the tree: a path
        // stays below `tree`.
        let path = tree.join(&entry.path);
        if entry.dir {
            fs::create_dir_all(&path).map_err(io("create", &path))?;
            continue;
        }
        let mut out =
            std::io::BufWriter::new(fs::File::create(&path).map_err(io("create", &path))?);
        for piece in &entry.pieces {
            match piece {
                flashrack_inspect::Piece::Embedded(bytes) => {
                    out.write_all(bytes).map_err(io("write", &path))?
                }
                flashrack_inspect::Piece::Zeros(len) => {
                    buf.fill(0);
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        out.write_all(&buf[..n]).map_err(io("write", &path))?;
                        left -= n as u64;
                    }
                }
                flashrack_inspect::Piece::At { offset, len } => {
                    let mut done = 0;
                    while done < *len {
                        let n = (*len - done).min(buf.len() as u64) as usize;
                        image
                            .read_exact_at(&mut buf[..n], offset + done)
                            .map_err(io("read", iso))?;
                        out.write_all(&buf[..n]).map_err(io("write", &path))?;
                        done += n as u64;
                    }
                }
            }
        }
        out.flush().map_err(io("write", &path))?;
    }
    Ok(())
}

fn make_writable(root: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut perms = meta.permissions();
        perms.set_mode(perms.mode() | 0o700);
        fs::set_permissions(&path, perms).map_err(io("change the mode of", &path))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io("list", &path))? {
                pending.push(entry.map_err(io("list", &path))?.path());
            }
        }
    }
    Ok(())
}
