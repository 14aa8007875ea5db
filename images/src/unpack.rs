//! Unpacking one image layer into a directory, refusing every entry that could write
//! outside it or smuggle privilege in. The layer is untrusted input: each refusal names
//! the entry and nothing is written outside the target directory.
//!
//! - paths: relative, without `..`; absolute paths are refused, not re-rooted;
//! - symlinks may point anywhere *inside* the image (absolute targets resolve against the
//!   image root at run time), but not climb above it with `..`;
//! - hardlinks must name an entry already unpacked from this layer;
//! - no entry is ever written through a symlink: every parent directory is checked with
//!   `lstat`, and files are created with `O_NOFOLLOW | O_EXCL`;
//! - device nodes are refused; FIFOs are skipped;
//! - setuid and setgid bits are stripped (the sandbox runs with `no_new_privs` and
//!   `nosuid`, so they could only ever matter outside it);
//! - whiteouts (`.wh.NAME`) delete NAME from the layers below; an opaque directory
//!   (`.wh..wh..opq`) hides everything below it; both are recorded as overlayfs expects
//!   (a 0:0 character device for a whiteout, the `trusted.overlay.opaque` xattr);
//! - duplicate entries are refused; sizes are bounded (a decompression bomb stops at the
//!   limit).

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{fchownat, FchownatFlags, Gid, Uid};
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Most bytes one layer may unpack to.
pub const MAX_LAYER_BYTES: u64 = 8 << 30;
/// Most entries one layer may hold.
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry `{entry}`: {reason}")]
    Refused { entry: String, reason: String },
    #[error("layer: {0}")]
    Archive(String),
    #[error("layer entry `{entry}`: {error}")]
    Io {
        entry: String,
        error: std::io::Error,
    },
    #[error("layer unpacks to more than {limit} {what}; refused as a decompression bomb")]
    TooLarge { what: &'static str, limit: u64 },
}

type Result<T> = std::result::Result<T, UnpackError>;

fn refuse(entry: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.display().to_string(),
        reason: reason.into(),
    }
}

/// Host ids the image's ids are shifted by, so that inside the sandbox's user namespace
/// the files have their image owners (root's files belong to the sandbox's root).
#[derive(Debug, Clone, Copy)]
pub struct IdShift {
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
}

/// What was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    pub setid_bits_stripped: u64,
}

/// A path from the archive, made relative and checked: no absolute path, no `..`.
fn clean_entry_path(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(raw, "absolute paths are refused"))
            }
            Component::ParentDir => return Err(refuse(raw, "`..` would leave the layer")),
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to the root) with `target` stays inside the root.
fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        // Resolved against the image's root at run time, where `..` at the root stays there;
        // what matters is that it never names a host path, and inside the sandbox it cannot.
        return true;
    }
    let mut depth: i64 = link
        .parent()
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// Refuses `rel` if any of its parents inside `root` is a symlink; creates missing parents.
fn prepare_parents(root: &Path, rel: &Path, entry: &Path) -> Result<()> {
    let mut current = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            current.push(c);
            match fs::symlink_metadata(&current) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(refuse(
                        entry,
                        format!(
                            "its parent `{}` is a symlink",
                            current.strip_prefix(root).unwrap_or(&current).display()
                        ),
                    ))
                }
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(refuse(
                        entry,
                        format!(
                            "its parent `{}` is not a directory",
                            current.strip_prefix(root).unwrap_or(&current).display()
                        ),
                    ))
                }
                Err(_) => fs::create_dir(&current).map_err(|error| UnpackError::Io {
                    entry: entry.display().to_string(),
                    error,
                })?,
            }
        }
    }
    Ok(())
}

fn shift(id: u64, base: u32, size: u32, entry: &Path) -> Result<u32> {
    if size == 1 {
        // A rootless store: every file belongs to the one id the sandbox has.
        return Ok(base);
    }
    if id >= u64::from(size) {
        return Err(refuse(
            entry,
            format!("owner id {id} is beyond the {size} ids the sandbox maps"),
        ));
    }
    Ok(base + id as u32)
}

fn lchown(path: &Path, uid: u32, gid: u32, entry: &Path) -> Result<()> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        FchownatFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| UnpackError::Io {
        entry: entry.display().to_string(),
        error: errno.into(),
    })
}

/// Removes `path` (file, link or whole directory) without following symlinks.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records a whiteout the way overlayfs reads it: a 0:0 character device.
fn make_whiteout(path: &Path, entry: &Path) -> Result<()> {
    // (0, 0) is the overlayfs whiteout device.
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|errno| UnpackError::Io {
        entry: entry.display().to_string(),
        error: errno.into(),
    })
}

/// Marks `dir` opaque for overlayfs, in both xattr namespaces: `trusted.` for an overlay
/// mounted by host root, `user.` for one mounted inside the sandbox's user namespace.
fn mark_opaque(dir: &Path, entry: &Path) -> Result<()> {
    // nix has no xattr calls: a raw lsetxattr, on a path that must not be cut short.
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| UnpackError::Io {
        entry: entry.display().to_string(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path holds a NUL byte",
        ),
    })?;
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: setxattr reads the NUL-terminated path and name and one byte of value.
        if unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
            return Err(UnpackError::Io {
                entry: entry.display().to_string(),
                error: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Unpacks the uncompressed tar stream `input` into `root` (which must exist and be empty).
pub fn unpack_layer(input: impl Read, root: &Path, ids: IdShift) -> Result<UnpackStats> {
    let mut archive = tar::Archive::new(input);
    let mut stats = UnpackStats::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| UnpackError::Archive(format!("truncated or corrupt: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Archive(e.to_string()))?
            .into_owned();
        let rel = clean_entry_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        stats.entries += 1;
        if stats.entries > MAX_LAYER_ENTRIES {
            return Err(UnpackError::TooLarge {
                what: "entries",
                limit: MAX_LAYER_ENTRIES,
            });
        }
        if !seen.insert(rel.clone()) {
            return Err(refuse(&raw, "it appears twice in the layer"));
        }
        prepare_parents(root, &rel, &raw)?;
        let target = root.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == ".wh..wh..opq" {
            let dir = target.parent().unwrap_or(root);
            for child in fs::read_dir(dir).map_err(|error| UnpackError::Io {
                entry: raw.display().to_string(),
                error,
            })? {
                let child = child.map_err(|error| UnpackError::Io {
                    entry: raw.display().to_string(),
                    error,
                })?;
                if !seen.contains(
                    &rel.parent()
                        .unwrap_or(Path::new(""))
                        .join(child.file_name()),
                ) {
                    remove_any(&child.path()).map_err(|error| UnpackError::Io {
                        entry: raw.display().to_string(),
                        error,
                    })?;
                }
            }
            mark_opaque(dir, &raw)?;
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let victim = target.with_file_name(hidden);
            remove_any(&victim).map_err(|error| UnpackError::Io {
                entry: raw.display().to_string(),
                error,
            })?;
            make_whiteout(&victim, &raw)?;
            stats.whiteouts += 1;
            continue;
        }
        let header = entry.header().clone();
        let mode = header
            .mode()
            .map_err(|e| UnpackError::Archive(e.to_string()))?;
        let (uid, gid) = (
            shift(header.uid().unwrap_or(0), ids.uid, ids.size, &raw)?,
            shift(header.gid().unwrap_or(0), ids.gid, ids.size, &raw)?,
        );
        let mut perm = mode & 0o7777;
        if perm & 0o6000 != 0 {
            perm &= !0o6000;
            stats.setid_bits_stripped += 1;
        }
        // An existing entry from a lower layer is replaced, never written through.
        if !header.entry_type().is_dir() {
            remove_any(&target).map_err(|error| UnpackError::Io {
                entry: raw.display().to_string(),
                error,
            })?;
        }
        let io = |error| UnpackError::Io {
            entry: raw.display().to_string(),
            error,
        };
        match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                stats.bytes += size;
                if stats.bytes > MAX_LAYER_BYTES {
                    return Err(UnpackError::TooLarge {
                        what: "bytes",
                        limit: MAX_LAYER_BYTES,
                    });
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io)?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(|e| UnpackError::Archive(format!("entry `{}`: {e}", raw.display())))?;
                if copied != size {
                    return Err(UnpackError::Archive(format!(
                        "entry `{}` is truncated ({copied} of {size} bytes)",
                        raw.display()
                    )));
                }
                file.flush().map_err(io)?;
                lchown(&target, uid, gid, &raw)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(perm)).map_err(io)?;
            }
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target).map_err(io)?;
                        fs::create_dir(&target).map_err(io)?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(io)?,
                }
                lchown(&target, uid, gid, &raw)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(perm)).map_err(io)?;
            }
            tar::EntryType::Symlink => {
                let link = header
                    .link_name()
                    .map_err(|e| UnpackError::Archive(e.to_string()))?
                    .ok_or_else(|| refuse(&raw, "a symlink without a target"))?;
                if !symlink_stays_inside(&rel, &link) {
                    return Err(refuse(
                        &raw,
                        format!("symlink to `{}` points outside the layer", link.display()),
                    ));
                }
                symlink(&link, &target).map_err(io)?;
                lchown(&target, uid, gid, &raw)?;
            }
            tar::EntryType::Link => {
                let link = header
                    .link_name()
                    .map_err(|e| UnpackError::Archive(e.to_string()))?
                    .ok_or_else(|| refuse(&raw, "a hardlink without a target"))?;
                let source = clean_entry_path(&link).map_err(|_| {
                    refuse(
                        &raw,
                        format!("hardlink to `{}` points outside the layer", link.display()),
                    )
                })?;
                if !seen.contains(&source) {
                    return Err(refuse(
                        &raw,
                        format!(
                            "hardlink to `{}`, which this layer has not unpacked",
                            link.display()
                        ),
                    ));
                }
                let source_path = root.join(&source);
                match fs::symlink_metadata(&source_path) {
                    Ok(md) if md.is_file() => {}
                    _ => {
                        return Err(refuse(
                            &raw,
                            format!(
                                "hardlink to `{}`, which is not a regular file here",
                                link.display()
                            ),
                        ))
                    }
                }
                fs::hard_link(&source_path, &target).map_err(io)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refuse(&raw, "device nodes are refused"))
            }
            tar::EntryType::Fifo => {}
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(refuse(
                    &raw,
                    format!("entry type {other:?} is not supported"),
                ))
            }
        }
    }
    Ok(stats)
}

/// The decompressed stream of a layer blob: tar, gzip or zstd, by media type or by the
/// magic bytes when the media type does not say.
pub fn decompressed<'a>(mut blob: impl Read + 'a, media_type: &str) -> Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut blob, &mut magic).map_err(|e| UnpackError::Archive(e.to_string()))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(blob);
    let gzip = media_type.ends_with("gzip") || magic[..2] == [0x1f, 0x8b];
    let zstd = media_type.ends_with("zstd") || magic == [0x28, 0xb5, 0x2f, 0xfd];
    Ok(if zstd {
        Box::new(
            zstd::stream::read::Decoder::new(chained)
                .map_err(|e| UnpackError::Archive(format!("zstd: {e}")))?,
        )
    } else if gzip {
        Box::new(flate2::read::GzDecoder::new(chained))
    } else {
        Box::new(chained)
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{AS_OWNERS, IDS};
    use covenant_test_support::skip_unless;

    /// A tar built entry by entry, including entries the `tar` crate's safe API refuses.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        fn entry(
            mut self,
            path: &str,
            kind: tar::EntryType,
            link: Option<&str>,
            data: &[u8],
            mode: u32,
        ) -> Self {
            let mut h = tar::Header::new_gnu();
            // Written raw so that `../` and absolute names reach the archive unchanged.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            if let Some(l) = link {
                let l = l.as_bytes();
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Self {
            self.entry(path, tar::EntryType::Regular, None, data, 0o644)
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<UnpackStats>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let r = unpack_layer(bytes, &root, IDS);
        (dir, r)
    }

    fn refused_entry(bytes: &[u8]) -> String {
        match unpack(bytes).1 {
            Err(UnpackError::Refused { entry, .. }) => entry,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Nothing may appear beside `root`, the layer's directory.
    fn nothing_outside(dir: &tempfile::TempDir) {
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("root")]);
    }

    #[test]
    fn a_plain_layer_unpacks_with_links_and_modes() {
        skip_unless!(AS_OWNERS);
        let bytes = Layer::new()
            .entry("bin/", tar::EntryType::Directory, None, b"", 0o755)
            .entry("bin/busybox", tar::EntryType::Regular, None, b"ELF", 0o4755)
            .entry(
                "bin/sh",
                tar::EntryType::Link,
                Some("bin/busybox"),
                b"",
                0o755,
            )
            .entry(
                "bin/ls",
                tar::EntryType::Symlink,
                Some("/bin/busybox"),
                b"",
                0o777,
            )
            .entry(
                "usr/lib/x",
                tar::EntryType::Symlink,
                Some("../../bin/busybox"),
                b"",
                0o777,
            )
            .bytes();
        let (dir, r) = unpack(&bytes);
        let stats = r.unwrap();
        assert_eq!(stats.setid_bits_stripped, 1);
        let root = dir.path().join("root");
        assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"ELF");
        assert_eq!(
            fs::metadata(root.join("bin/busybox"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755,
            "setuid stripped"
        );
        assert_eq!(
            fs::read_link(root.join("bin/ls")).unwrap(),
            Path::new("/bin/busybox")
        );
        nothing_outside(&dir);
    }

    #[test]
    fn parent_paths_and_absolute_paths_are_refused() {
        let (dir, _) = unpack(&Layer::new().file("../escape", b"x").bytes());
        nothing_outside(&dir);
        assert_eq!(
            refused_entry(&Layer::new().file("../escape", b"x").bytes()),
            "../escape"
        );
        assert_eq!(
            refused_entry(&Layer::new().file("a/../../escape", b"x").bytes()),
            "a/../../escape"
        );
        assert_eq!(
            refused_entry(&Layer::new().file("/etc/evil", b"x").bytes()),
            "/etc/evil"
        );
    }

    #[test]
    fn links_that_leave_the_layer_are_refused() {
        let sym = Layer::new()
            .entry(
                "a/link",
                tar::EntryType::Symlink,
                Some("../../etc"),
                b"",
                0o777,
            )
            .bytes();
        assert_eq!(refused_entry(&sym), "a/link");
        let hard = Layer::new()
            .entry(
                "passwd",
                tar::EntryType::Link,
                Some("../../etc/passwd"),
                b"",
                0o644,
            )
            .bytes();
        assert_eq!(refused_entry(&hard), "passwd");
        let hard_abs = Layer::new()
            .entry(
                "shadow",
                tar::EntryType::Link,
                Some("/etc/shadow"),
                b"",
                0o644,
            )
            .bytes();
        assert_eq!(refused_entry(&hard_abs), "shadow");
        let unseen = Layer::new()
            .entry("x", tar::EntryType::Link, Some("not-in-layer"), b"", 0o644)
            .bytes();
        assert_eq!(refused_entry(&unseen), "x");
    }

    #[test]
    fn an_entry_under_a_symlinked_parent_is_refused_and_nothing_escapes() {
        skip_unless!(AS_OWNERS);
        let bytes = Layer::new()
            .entry("etc", tar::EntryType::Symlink, Some("/tmp"), b"", 0o777)
            .file("etc/evil", b"x")
            .bytes();
        let (dir, r) = unpack(&bytes);
        assert!(
            matches!(r, Err(UnpackError::Refused { ref entry, .. }) if entry == "etc/evil"),
            "{r:?}"
        );
        nothing_outside(&dir);
        assert!(!Path::new("/tmp/evil").exists());
    }

    #[test]
    fn devices_and_duplicates_are_refused() {
        skip_unless!(AS_OWNERS);
        let dev = Layer::new()
            .entry("dev/sda", tar::EntryType::Block, None, b"", 0o600)
            .bytes();
        assert_eq!(refused_entry(&dev), "dev/sda");
        let chr = Layer::new()
            .entry("dev/mem", tar::EntryType::Char, None, b"", 0o600)
            .bytes();
        assert_eq!(refused_entry(&chr), "dev/mem");
        let dup = Layer::new().file("a", b"1").file("a", b"2").bytes();
        assert_eq!(refused_entry(&dup), "a");
    }

    #[test]
    fn a_truncated_layer_is_an_error() {
        let mut bytes = Layer::new().file("big", &[7u8; 4096]).bytes();
        bytes.truncate(1024);
        let (_d, r) = unpack(&bytes);
        assert!(matches!(r, Err(UnpackError::Archive(_))), "{r:?}");
    }

    #[test]
    fn whiteouts_and_opaque_directories_become_overlay_markers() {
        skip_unless!(AS_OWNERS);
        let bytes = Layer::new()
            .entry("etc/", tar::EntryType::Directory, None, b"", 0o755)
            .file("etc/.wh.motd", b"")
            .entry("var/", tar::EntryType::Directory, None, b"", 0o755)
            .file("var/.wh..wh..opq", b"")
            .bytes();
        let (dir, r) = unpack(&bytes);
        r.unwrap();
        use std::os::unix::fs::FileTypeExt;
        let wh = fs::symlink_metadata(dir.path().join("root/etc/motd")).unwrap();
        assert!(
            wh.file_type().is_char_device(),
            "a whiteout is a 0:0 character device"
        );
    }

    #[test]
    fn gzip_and_zstd_layers_decompress_and_a_bomb_stops_at_the_limit() {
        skip_unless!(AS_OWNERS);
        let plain = Layer::new().file("hello", b"world").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for (blob, media) in [
            (gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            unpack_layer(decompressed(&blob[..], media).unwrap(), dir.path(), IDS).unwrap();
            assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"world");
        }
        // A small gzip whose entry claims more than the limit allows.
        let mut h = tar::Header::new_gnu();
        h.set_path("bomb").unwrap();
        h.set_size(MAX_LAYER_BYTES + 1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[0u8; 512]);
        let (_d, r) = unpack(&raw);
        assert!(matches!(r, Err(UnpackError::TooLarge { .. })), "{r:?}");
    }
}
