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

pub use flashrack_core::{BuildStage, BuildState};

/// How a build is stopped from outside: a flag the build looks at between
/// steps (and the import between chunks), and the program it runs now, which
/// a cancel kills. Shared by the build's thread and whoever may cancel it.
#[derive(Debug, Default)]
pub struct Cancel {
    /// Raised by [`cancel`](Self::cancel); the import of the layout watches
    /// it too.
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The program the build waits for now. The child is reaped only after
    /// it is taken out of here, under this lock, so a kill through it never
    /// reaches a process id reused by another process. A `std` mutex: held
    /// only to put, take or kill, never across a wait.
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl Cancel {
    /// Asks the build to stop: raises the flag and kills the program it
    /// runs now, if any.
    pub fn cancel(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(child) = self.child.lock().expect("no panic while held").as_mut() {
            // Already gone: nothing to kill, and not yet reaped.
            let _ = child.kill();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled: a build stops at the next check.
    fn check(&self) -> Result<(), BuildError> {
        if self.is_cancelled() {
            Err(BuildError::Cancelled)
        } else {
            Ok(())
        }
    }
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
    /// The build was cancelled; nothing of it is kept.
    #[error("the build was cancelled")]
    Cancelled,
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

fn tool(
    program: &str,
    args: &[&std::ffi::OsStr],
    stdin: Option<&str>,
    cancel: &Cancel,
) -> Result<(), BuildError> {
    tool_with_lines(program, args, stdin, cancel, &mut |_| {})
}

/// [`tool`], giving each line the program writes on its error output to
/// `line` as it comes (`mcopy -v` names each file there as it starts it).
fn tool_with_lines(
    program: &str,
    args: &[&std::ffi::OsStr],
    stdin: Option<&str>,
    cancel: &Cancel,
    line: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    use std::io::{BufRead, Write};
    cancel.check()?;
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
    let input = child.stdin.take();
    let mut errors = child.stderr.take();
    // From here a cancel kills it.
    *cancel.child.lock().expect("no panic while held") = Some(child);
    if cancel.is_cancelled() {
        cancel.cancel();
    }
    if let (Some(text), Some(mut input)) = (stdin, input) {
        // A program killed or done early closes its end: its status says why.
        let _ = input.write_all(text.as_bytes());
    }
    // Until the program ends (or is killed): its error output, line by
    // line, then its status.
    let mut stderr = Vec::new();
    if let Some(errors) = errors.take() {
        let mut errors = std::io::BufReader::new(errors);
        let mut buf = Vec::new();
        while matches!(errors.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            line(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
            stderr.append(&mut buf);
        }
    }
    let mut child = cancel
        .child
        .lock()
        .expect("no panic while held")
        .take()
        .expect("the build's program is taken out once");
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    cancel.check()?;
    if !status.success() {
        return Err(failed(format!(
            "{}: {}",
            status,
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    Ok(())
}

/// Where built layouts are remembered: `<data_dir>/bootable/<iso sha256>`
/// holds the layout's sha256 (`<iso sha256>-split-<bytes>` for a layout
/// whose files were split above another size than FAT32's limit: a build
/// asked with another size is built, not answered with the other layout).
fn memo(data_dir: &Path, iso: Sha256Digest, max_file_size: u64) -> PathBuf {
    let dir = data_dir.join("bootable");
    if max_file_size == FAT32_MAX_FILE {
        dir.join(iso.to_hex())
    } else {
        // Another split size is another layout: remembered apart.
        dir.join(format!("{}-split-{max_file_size}", iso.to_hex()))
    }
}

/// Builds (or finds, when built before) the bootable layout of `iso`.
/// Blocking: runs programs and copies the ISO's files.
pub fn build_bootable(
    cache: &ImageCache,
    data_dir: &Path,
    iso: &CachedImage,
    request: &BuildRequest,
) -> Result<Built, AppError> {
    build_bootable_with(
        cache,
        data_dir,
        iso,
        request,
        &|_| {},
        &|_| {},
        &Cancel::default(),
    )
}

/// [`build_bootable`], telling `stage` where it is (each stage in the order
/// of [`BuildStage::ALL`], `splitting` too when there is nothing to split)
/// and `bytes` how far the copying and hashing stages are ([`StageBytes`]),
/// and stopped by `cancel`: at the next step, the program it runs killed,
/// the import abandoned, the work directory removed; a cancelled build
/// leaves nothing in the cache (an image its import had just finished is
/// removed again) and remembers no layout. The built image's provenance
/// says what it was built from, how and when ([`Provenance::built`]): the
/// image records and reports carry it.
pub fn build_bootable_with(
    cache: &ImageCache,
    data_dir: &Path,
    iso: &CachedImage,
    request: &BuildRequest,
    stage: &dyn Fn(BuildStage),
    bytes: &dyn Fn(StageBytes),
    cancel: &Cancel,
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
    let remembered = memo(data_dir, iso.sha256(), request.max_file_size);
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
    cancel.check()?;
    stage(BuildStage::Extracting);
    if iso_info.udf {
        // The UDF tree is the whole one where there is one (Windows ISOs
        // keep their files there only, the ISO 9660 side holds a README).
        extract_udf(&iso.path, &name, &tree, cancel)?;
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
            cancel,
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
    cancel.check()?;
    stage(BuildStage::Splitting);
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
            cancel,
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

    cancel.check()?;
    stage(BuildStage::Partitioning);
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
        cancel,
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
        cancel,
    )?;
    cancel.check()?;
    stage(BuildStage::CopyingFiles);
    let target = format!("{}@@{}", layout.display(), MIB);
    let mut entries: Vec<PathBuf> = fs::read_dir(&tree)
        .map_err(io("list", &tree))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    // What mcopy will copy, in the order it names each item on its error
    // output (`-v`: before copying it): the arguments in order, each
    // directory's entries in the order the directory lists them, depth
    // first. A line that is not the next expected name (an mcopy that walks
    // otherwise) ends the reports for this stage rather than guess.
    let order = copy_order(&entries)?;
    let total: u64 = order.iter().map(|(_, size)| size).sum();
    bytes(StageBytes {
        stage: BuildStage::CopyingFiles,
        done: 0,
        total,
    });
    if !entries.is_empty() {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-v".as_ref(),
            "-s".as_ref(),
            "-m".as_ref(),
            "-i".as_ref(),
            target.as_ref(),
        ];
        args.extend(entries.iter().map(|p| p.as_os_str()));
        args.push("::/".as_ref());
        let (mut next, mut done, mut lost) = (0usize, 0u64, false);
        tool_with_lines("mcopy", &args, None, cancel, &mut |line| {
            let Some(name) = line.strip_prefix("Copying ") else {
                return;
            };
            if lost {
                return;
            }
            match order.get(next) {
                Some((expected, size)) if expected == name => {
                    // Everything before this item is copied.
                    bytes(StageBytes {
                        stage: BuildStage::CopyingFiles,
                        done,
                        total,
                    });
                    done += size;
                    next += 1;
                }
                _ => {
                    lost = true;
                    tracing::debug!(line, "mcopy named a file out of the expected order");
                }
            }
        })?;
    }
    bytes(StageBytes {
        stage: BuildStage::CopyingFiles,
        done: total,
        total,
    });
    cancel.check()?;
    stage(BuildStage::Hashing);
    let layout_size = fs::metadata(&layout)
        .map_err(io("read the size of", &layout))?
        .len();
    bytes(StageBytes {
        stage: BuildStage::Hashing,
        done: 0,
        total: layout_size,
    });
    // The import's pass tells its observer each chunk it stores (on the
    // import's thread); this thread passes them on as they come, until the
    // import has returned.
    let (tx, rx) = std::sync::mpsc::channel::<Option<u64>>();
    let observer = std::sync::Arc::new(HashProgress {
        done: Default::default(),
        tx: tx.clone(),
    });
    let outcome = std::thread::scope(|scope| {
        let import = scope.spawn(|| {
            let outcome = crate::images::import_observed(
                cache,
                &layout,
                request.max_image_size,
                cancel.flag.clone(),
                observer,
            );
            let _ = tx.send(None);
            outcome
        });
        while let Ok(Some(done)) = rx.recv() {
            bytes(StageBytes {
                stage: BuildStage::Hashing,
                done: done.min(layout_size),
                total: layout_size,
            });
        }
        import
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
    .map_err(|error| {
        if cancel.is_cancelled() {
            BuildError::Cancelled.into()
        } else {
            error
        }
    })?;
    // Cancelled as the import ended: what it added goes again.
    if cancel.is_cancelled() {
        if !outcome.already_cached() {
            cache.remove(&outcome.image.sha256())?;
        }
        return Err(BuildError::Cancelled.into());
    }
    let image = outcome.image;
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

/// How far a build's copying or hashing stage is: `done` of `total` bytes
/// (the ISO's files copied into the layout; the layout read and hashed by
/// its import into the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageBytes {
    /// The stage (copying files or hashing).
    pub stage: BuildStage,
    /// Bytes done.
    pub done: u64,
    /// Bytes the stage has in all.
    pub total: u64,
}

/// The hashing stage's observer of the import's pass: counts the bytes of
/// each chunk stored and sends the running count.
#[derive(Debug)]
struct HashProgress {
    done: std::sync::atomic::AtomicU64,
    tx: std::sync::mpsc::Sender<Option<u64>>,
}

impl flashrack_image::ImportObserver for HashProgress {
    fn began(&self, _raw: &fs::File, _chunk_size: u32, _size: Option<u64>) {}

    fn chunk(&self, len: usize, _zero: bool, _fingerprint: u128) {
        let done = self
            .done
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed)
            + len as u64;
        let _ = self.tx.send(Some(done));
    }

    /// Takes the bytes as they go past (and does nothing with them but
    /// count them), so that the import reads the layout as it would
    /// without an observer: past the page cache.
    fn takes_bytes(&self) -> bool {
        true
    }

    /// Never said of a file's import (only of a zip read as it arrives);
    /// the count would only be of bytes hashed, nothing written from them.
    fn abandoned(&self, _reason: &str) {}
}

/// The items `mcopy -s` copies from `entries`, in the order it names them
/// with `-v`: each entry, and a directory's contents after it in the order
/// the directory lists them, depth first; `(name, bytes)`, 0 for a
/// directory.
fn copy_order(entries: &[PathBuf]) -> Result<Vec<(String, u64)>, BuildError> {
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = entries.iter().rev().cloned().collect();
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io("read", &path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.is_dir() {
            out.push((name, 0));
            let children: Vec<PathBuf> = fs::read_dir(&path)
                .map_err(io("list", &path))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io("list", &path))?;
            pending.extend(children.into_iter().rev());
        } else {
            out.push((name, meta.len()));
        }
    }
    Ok(out)
}

/// Called on a build's thread as the build enters each stage, with the
/// build's id (once the stage is recorded). Tests hold a build in a stage
/// with it; the station runs none.
pub type StageHook = std::sync::Arc<dyn Fn(i64, BuildStage) + Send + Sync>;

/// Called on a build's thread with each report of its copying or hashing
/// stage's bytes (once the API shows it), with the build's id. Tests hold a
/// build part way through a stage with it; the station runs none.
pub type BytesHook = std::sync::Arc<dyn Fn(i64, StageBytes) + Send + Sync>;

/// The station's builds for the web side (`flashrack_web::Builds`): each
/// runs on a blocking thread and is kept in the records (SQLite table
/// `bootable_builds`: started, each stage, how it ended), so that the list
/// survives a restart and a build that was under way when the station
/// stopped is shown `interrupted`. One build per ISO at a time: asking again
/// while one runs answers that one. A build can be cancelled
/// ([`cancel`](flashrack_web::Builds::cancel)): it stops at once, keeping
/// nothing in the cache.
pub struct BuildService {
    cache: ImageCache,
    data_dir: PathBuf,
    /// The largest image the cache takes (the guard's largest target).
    max_image_size: ByteSize,
    runtime: tokio::runtime::Handle,
    /// Where builds are recorded.
    store: flashrack_store::Store,
    /// The builds under way: id, the ISO, and how to stop each. A `std`
    /// mutex: held only to add, find or remove one, never across an await
    /// or a build.
    running: std::sync::Arc<std::sync::Mutex<Vec<Running>>>,
    /// See [`StageHook`].
    on_stage: Option<StageHook>,
    /// See [`BytesHook`].
    on_bytes: Option<BytesHook>,
    /// How far each build under way is in its copying or hashing stage, by
    /// id: progress lives in memory, never in the records. A `std` mutex,
    /// held to set or read one entry.
    bytes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, StageBytes>>>,
}

/// A build under way.
struct Running {
    id: i64,
    source: Sha256Digest,
    cancel: std::sync::Arc<Cancel>,
}

/// The words a cancelled build's record carries.
pub const CANCELLED_DETAIL: &str = "cancelled by the operator; nothing of it was cached";

/// Why a build cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No build has this id.
    #[error("no build {0}")]
    Unknown(i64),
    /// The build has ended already.
    #[error("build {id} has already ended ({state}): there is nothing to cancel")]
    Ended {
        /// The build.
        id: i64,
        /// How it ended.
        state: BuildState,
    },
    /// The records could not be read.
    #[error(transparent)]
    Store(#[from] flashrack_store::StoreError),
}

impl BuildService {
    /// Builds into `cache`, remembering layouts under `data_dir` and
    /// recording builds in `store`; images larger than `max_image_size` are
    /// refused. Builds the records show under way were under way when the
    /// station stopped: they become `interrupted` here, and their work
    /// directories are removed. Tasks run on the current tokio runtime.
    pub async fn open(
        cache: ImageCache,
        data_dir: PathBuf,
        max_image_size: ByteSize,
        store: flashrack_store::Store,
    ) -> Result<Self, AppError> {
        let interrupted = store.interrupt_builds().await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "bootable builds under way when the station stopped are interrupted"
            );
        }
        remove_work_dirs(&data_dir);
        Ok(Self {
            cache,
            data_dir,
            max_image_size,
            runtime: tokio::runtime::Handle::current(),
            store,
            running: Default::default(),
            on_stage: None,
            on_bytes: None,
            bytes: Default::default(),
        })
    }

    /// Calls `hook` as each build enters each stage (see [`StageHook`]).
    pub fn with_stage_hook(mut self, hook: Option<StageHook>) -> Self {
        self.on_stage = hook;
        self
    }

    /// Calls `hook` with each report of a build's bytes (see [`BytesHook`]).
    pub fn with_bytes_hook(mut self, hook: Option<BytesHook>) -> Self {
        self.on_bytes = hook;
        self
    }

    /// Stops every build under way (the station shuts down): each is
    /// recorded `interrupted` at once, and its thread, cancelled, keeps
    /// nothing.
    pub async fn interrupt_all(&self) {
        let running: Vec<std::sync::Arc<Cancel>> = self
            .running
            .lock()
            .expect("no panic while held")
            .iter()
            .map(|r| r.cancel.clone())
            .collect();
        if running.is_empty() {
            return;
        }
        match self.store.interrupt_builds().await {
            Ok(n) => tracing::info!(builds = n, "bootable builds interrupted by the shutdown"),
            Err(error) => tracing::warn!(%error, "cannot record the interrupted builds"),
        }
        for cancel in running {
            cancel.cancel();
        }
    }

    async fn start_build(
        &self,
        start: flashrack_web::BuildStart,
    ) -> Result<serde_json::Value, String> {
        let iso = start.iso;
        let already = self
            .running
            .lock()
            .expect("no panic while held")
            .iter()
            .find(|r| r.source == iso.sha256())
            .map(|r| r.id);
        if let Some(id) = already {
            return self.view_of(id).await;
        }
        let id = self
            .store
            .build_started(flashrack_store::NewBuild {
                source_sha256: iso.sha256(),
                source_name: iso.meta.original_name.clone(),
                name: start.name.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let cancel = std::sync::Arc::new(Cancel::default());
        self.running
            .lock()
            .expect("no panic while held")
            .push(Running {
                id,
                source: iso.sha256(),
                cancel: cancel.clone(),
            });
        let request = BuildRequest {
            name: start.name,
            max_file_size: FAT32_MAX_FILE,
            max_image_size: self.max_image_size,
        };
        let cache = self.cache.clone();
        let data_dir = self.data_dir.clone();
        let store = self.store.clone();
        let running = self.running.clone();
        let hook = self.on_stage.clone();
        let bytes_hook = self.on_bytes.clone();
        let progress = self.bytes.clone();
        let runtime = self.runtime.clone();
        self.runtime.spawn_blocking(move || {
            let stage = |stage: BuildStage| {
                progress.lock().expect("no panic while held").remove(&id);
                if let Err(error) = runtime.block_on(store.build_stage(id, stage)) {
                    tracing::warn!(%error, build = id, "cannot record the build's stage");
                }
                if let Some(hook) = &hook {
                    hook(id, stage);
                }
            };
            let bytes = |bytes: StageBytes| {
                progress
                    .lock()
                    .expect("no panic while held")
                    .insert(id, bytes);
                if let Some(hook) = &bytes_hook {
                    hook(id, bytes);
                }
            };
            let outcome =
                build_bootable_with(&cache, &data_dir, &iso, &request, &stage, &bytes, &cancel);
            progress.lock().expect("no panic while held").remove(&id);
            let end = match outcome {
                Ok(built) => flashrack_store::BuildEnd::Built {
                    image: built.image.sha256(),
                    size: built.image.size(),
                    reused: built.reused,
                    split: built
                        .split
                        .iter()
                        .map(|(file, parts)| (file.clone(), *parts as u32))
                        .collect(),
                },
                Err(_) if cancel.is_cancelled() => flashrack_store::BuildEnd::Cancelled {
                    detail: CANCELLED_DETAIL.to_string(),
                },
                Err(error) => {
                    tracing::warn!(%error, iso = %iso.sha256().short(), "bootable build failed");
                    flashrack_store::BuildEnd::Failed {
                        detail: error_words(&error),
                    }
                }
            };
            // Recorded before the build leaves the running list: a cancel
            // that finds it gone finds it ended. A build the shutdown
            // recorded as interrupted keeps that.
            if let Err(error) = runtime.block_on(store.build_ended(id, end)) {
                tracing::warn!(%error, build = id, "cannot record how the build ended");
            }
            running
                .lock()
                .expect("no panic while held")
                .retain(|r| r.id != id);
        });
        self.view_of(id).await
    }

    /// Cancels build `id`: its record says `cancelled` once it has stopped.
    async fn cancel_build(&self, id: i64) -> Result<serde_json::Value, CancelError> {
        let cancel = self
            .running
            .lock()
            .expect("no panic while held")
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.cancel.clone());
        match cancel {
            Some(cancel) => {
                cancel.cancel();
                let mut view = self
                    .view_of(id)
                    .await
                    .map_err(|_| CancelError::Unknown(id))?;
                view["cancel_requested"] = serde_json::Value::Bool(true);
                Ok(view)
            }
            // Not under way: ended (or its end is being recorded now).
            None => match self.store.build(id).await? {
                None => Err(CancelError::Unknown(id)),
                Some(record) => Err(CancelError::Ended {
                    id,
                    state: record.state,
                }),
            },
        }
    }

    async fn view_of(&self, id: i64) -> Result<serde_json::Value, String> {
        let record = self
            .store
            .build(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no build {id}"))?;
        Ok(self.view(record).await)
    }

    /// A build as the API shows it: `{"id", "source", "source_name", "name",
    /// "state", "stage", "stage_number", "stage_count", "stages",
    /// "stage_bytes", "method", "started_at", "finished_at", "image",
    /// "size", "reused", "split", "provenance", "error"}`; `stage_bytes` is
    /// `{"done", "total"}` while a build under way copies its files or
    /// hashes its layout, else null.
    async fn view(&self, record: flashrack_store::BuildRecord) -> serde_json::Value {
        use serde_json::json;
        let (image, size, reused, split) = match &record.built {
            Some(layout) => (
                Some(layout.image),
                Some(layout.size),
                Some(layout.reused),
                layout
                    .split
                    .iter()
                    .map(|(file, parts)| json!({"file": file, "parts": parts}))
                    .collect(),
            ),
            None => (None, None, None, Vec::new()),
        };
        let provenance = match image {
            Some(image) => {
                let cache = self.cache.clone();
                tokio::task::spawn_blocking(move || cache.get(&image))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .and_then(|i| i.meta.provenance)
            }
            None => None,
        };
        // A fresh build ended when its provenance says: the view and the
        // image's records agree to the millisecond.
        let finished_at = match (&provenance, reused) {
            (Some(p), Some(false)) if p.built.is_some() => {
                p.built.as_ref().map(|b| b.built_at.clone())
            }
            _ => record.finished_at.map(flashrack_report::format_time),
        };
        let stage_bytes = (record.state == BuildState::Building)
            .then(|| {
                self.bytes
                    .lock()
                    .expect("no panic while held")
                    .get(&record.id)
                    .copied()
            })
            .flatten()
            .filter(|b| Some(b.stage) == record.stage)
            .map(|b| json!({"done": b.done, "total": b.total}));
        let reached = record.stage.map_or(0, BuildStage::number);
        let stages: Vec<serde_json::Value> = BuildStage::ALL
            .iter()
            .map(|stage| {
                let n = stage.number();
                let state = if n < reached || (n == reached && record.state == BuildState::Built) {
                    "done"
                } else if n == reached {
                    match record.state {
                        BuildState::Building => "current",
                        _ => "stopped",
                    }
                } else {
                    "pending"
                };
                json!({"stage": stage, "words": stage.to_string(), "state": state})
            })
            .collect();
        json!({
            "id": record.id,
            "source": record.build.source_sha256,
            "source_name": record.build.source_name,
            "name": record.build.name,
            "state": record.state,
            "stage": record.stage,
            "stage_words": record.stage.map(|s| s.to_string()),
            "stage_number": record.stage.map(BuildStage::number),
            "stage_count": BuildStage::ALL.len(),
            "stages": stages,
            "stage_bytes": stage_bytes,
            "method": METHOD,
            "started_at": flashrack_report::format_time(record.started_at),
            "finished_at": finished_at,
            "image": image,
            "size": size,
            "reused": reused,
            "split": split,
            "provenance": provenance,
            "error": record.detail,
        })
    }
}

/// Removes the work directories builds left behind when the station
/// stopped under them (`<data_dir>/bootable/build-*`).
fn remove_work_dirs(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir.join("bootable")) else {
        return;
    };
    for entry in entries.flatten() {
        let is_work = entry.file_name().to_string_lossy().starts_with("build-")
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_work {
            if let Err(error) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(%error, dir = %entry.path().display(), "cannot remove a build's work directory");
            }
        }
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
        Box::pin(self.start_build(request))
    }

    fn list(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let records = self.store.builds().await.map_err(|e| e.to_string())?;
            let mut views = Vec::with_capacity(records.len());
            for record in records {
                views.push(self.view(record).await);
            }
            Ok(serde_json::Value::Array(views))
        })
    }

    fn cancel(
        &self,
        id: u64,
    ) -> futures::future::BoxFuture<'_, Result<serde_json::Value, flashrack_web::CancelRefusal>>
    {
        Box::pin(async move {
            let Ok(id) = i64::try_from(id) else {
                return Err(flashrack_web::CancelRefusal::Unknown(format!(
                    "no build {id}"
                )));
            };
            self.cancel_build(id).await.map_err(|error| match error {
                CancelError::Unknown(_) => flashrack_web::CancelRefusal::Unknown(error.to_string()),
                CancelError::Ended { .. } => flashrack_web::CancelRefusal::Ended(error.to_string()),
                CancelError::Store(_) => flashrack_web::CancelRefusal::Failed(error.to_string()),
            })
        })
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
    flashrack_core::file_name_from(name, flashrack_core::MAX_FILE_NAME_BYTES)
        .unwrap_or_else(|| "bootable.img".into())
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
fn extract_udf(iso: &Path, name: &str, tree: &Path, cancel: &Cancel) -> Result<(), BuildError> {
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
        cancel.check()?;
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
                        cancel.check()?;
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
