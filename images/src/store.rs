//! The image store: a content-addressed directory under `$COVENANT_HOME/images`.
//!
//! ```text
//! blobs/sha256/HEX     every blob, its digest verified when it came in
//! layers/HEX/          each layer blob unpacked (see `unpack`), ids shifted for the sandbox
//! refs.json            NAME:TAG -> image record (manifest, config, layer digests)
//! ```
//!
//! Import accepts an OCI image layout (directory or tar, as `skopeo copy ... oci:` or
//! `oci-archive:` write it) and a `docker save` tar. Every digest is checked: manifest,
//! config and layer blobs against their descriptors, and each layer's uncompressed
//! content against the config's `diff_ids`.

use crate::unpack::{decompressed, unpack_layer, IdShift, UnpackError};
use covenant_policy::plan::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Largest blob accepted.
pub const MAX_BLOB_BYTES: u64 = 16 << 30;
/// Largest manifest, index or config accepted.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} is neither an OCI image layout (directory or tar) nor a `docker save` tar")]
    UnknownFormat(PathBuf),
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("blob {digest}: the content's digest is {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("layer {digest}: its uncompressed content is {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("no image `{0}`; see `covenant-ctl image ls`")]
    NotFound(String),
    #[error("image `{name}` is in use by a running sandbox; it was not removed")]
    InUse { name: String },
    #[error("image {manifest_digest} was removed before its run could hold it; import it again")]
    Removed { manifest_digest: String },
    #[error("the image has no name: give --name NAME:TAG")]
    NoName,
    #[error("image store {path} was unpacked for sandbox ids starting at {stored}, but this host maps them to {wanted}")]
    IdShiftChanged {
        path: PathBuf,
        stored: u32,
        wanted: u32,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |error| ImageError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

/// One imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer blob digests, base layer first.
    pub layers: Vec<String>,
    pub size_bytes: u64,
    pub imported_ms: i64,
    /// The config's `Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, for `inspect`.
    pub config: serde_json::Value,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    /// Host uid/gid the image's id 0 was shifted to when layers were unpacked.
    id_shift: Option<(u32, u32)>,
    images: BTreeMap<String, ImageRecord>,
    /// Images an import took the name of: kept, with their layers, for as long as a run
    /// holds them; `gc` drops those nobody holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<ImageRecord>,
}

/// A run's shared lock on its image ([`ImageStore::hold`]), released when dropped (or when
/// the process holding it dies).
#[derive(Debug)]
pub struct ImageHold {
    _lock: Flock<fs::File>,
}

/// Normalises `name[:tag]` to `name:tag` (default tag `latest`).
pub fn normalise_name(name: &str) -> Result<String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
    };
    if !valid(name) || name.contains("..") {
        return Err(invalid(
            format!("image name `{name}`"),
            "use letters, digits and `-_./`, with an optional `:TAG`",
        ));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    Ok(if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    })
}

pub struct ImageStore {
    root: PathBuf,
}

/// Reads at most `limit` bytes of `path`.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = fs::File::open(path).map_err(io(path))?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(io(path))?;
    if buf.len() as u64 > limit {
        return Err(invalid(
            path.display().to_string(),
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        invalid(
            format!("digest `{digest}`"),
            "only sha256 digests are supported",
        )
    })?;
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(invalid(
            format!("digest `{digest}`"),
            "not 64 lower-case hex digits",
        ));
    }
    Ok(hex)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "layers", "tmp", "locks"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        // The sandbox's host uid must traverse to the layers.
        use std::os::unix::fs::PermissionsExt;
        for dir in [root.to_path_buf(), root.join("layers")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).map_err(io(&dir))?;
        }
        let locks = root.join("locks");
        fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).map_err(io(&locks))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn refs(&self) -> Result<Refs> {
        let path = self.root.join("refs.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| invalid(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn save_refs(&self, refs: &Refs) -> Result<()> {
        let path = self.root.join("refs.json");
        let tmp = self.root.join("refs.json.tmp");
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(refs).expect("serialisable"))
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// The unpacked directory of a layer blob.
    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers").join(digest_hex(digest)?))
    }

    /// Copies `source` into the store as `digest`, refusing content with another digest.
    fn ingest(&self, source: &Path, digest: &str) -> Result<PathBuf> {
        let target = self.blob_path(digest)?;
        if target.exists() {
            return Ok(target);
        }
        let tmp =
            self.root
                .join("tmp")
                .join(format!("{}.{}", digest_hex(digest)?, std::process::id()));
        let input = fs::File::open(source).map_err(io(source))?;
        let mut reader = Hashing {
            inner: input.take(MAX_BLOB_BYTES + 1),
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut out = fs::File::create(&tmp).map_err(io(&tmp))?;
        std::io::copy(&mut reader, &mut out).map_err(io(source))?;
        if reader.bytes > MAX_BLOB_BYTES {
            let _ = fs::remove_file(&tmp);
            return Err(invalid(
                format!("blob {digest}"),
                format!("larger than {MAX_BLOB_BYTES} bytes"),
            ));
        }
        let actual = format!("sha256:{}", hex(&reader.hash.finalize()));
        if actual != digest {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        out.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &target).map_err(io(&target))?;
        Ok(target)
    }

    /// Unpacks a stored layer blob (if not unpacked yet), checking its diff id.
    fn unpack(
        &self,
        digest: &str,
        media_type: &str,
        diff_id: Option<&str>,
        ids: IdShift,
    ) -> Result<()> {
        let dir = self.layer_dir(digest)?;
        if dir.exists() {
            return Ok(());
        }
        let staging = self.root.join("tmp").join(format!(
            "layer-{}.{}",
            digest_hex(digest)?,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).map_err(io(&staging))?;
        let result = (|| {
            let blob = fs::File::open(self.blob_path(digest)?).map_err(io(&staging))?;
            let mut hashing = Hashing {
                inner: decompressed(blob, media_type)?,
                hash: Sha256::new(),
                bytes: 0,
            };
            unpack_layer(&mut hashing, &staging, ids)?;
            // Drain what the tar reader left (padding), so the digest covers the stream.
            std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io(&staging))?;
            let actual = format!("sha256:{}", hex(&hashing.hash.finalize()));
            if let Some(expected) = diff_id {
                if actual != expected {
                    return Err(ImageError::DiffIdMismatch {
                        digest: digest.into(),
                        expected: expected.into(),
                        actual,
                    });
                }
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
                .map_err(io(&staging))?;
            fs::rename(&staging, &dir).map_err(io(&dir))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Imports an image from `path`; names it `name`, or by the layout's
    /// `org.opencontainers.image.ref.name` annotation or the archive's first repo tag.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        ids: IdShift,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        // One writer at a time: `gc` must not take layers an import has unpacked but not
        // named yet.
        let _store = self.exclusive()?;
        let mut refs = self.refs()?;
        if let Some((u, _)) = refs.id_shift {
            if u != ids.uid {
                return Err(ImageError::IdShiftChanged {
                    path: self.root.clone(),
                    stored: u,
                    wanted: ids.uid,
                });
            }
        }
        let staging = self
            .root
            .join("tmp")
            .join(format!("import.{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let layout = if path.is_dir() {
            path.to_path_buf()
        } else {
            // An archive is unpacked with the same checks as a layer, then read as a layout.
            fs::create_dir_all(&staging).map_err(io(&staging))?;
            progress(&format!("reading archive {}", path.display()));
            let file = fs::File::open(path).map_err(io(path))?;
            unpack_layer(
                file,
                &staging,
                IdShift {
                    uid: 0,
                    gid: 0,
                    size: u32::MAX,
                },
            )?;
            staging.clone()
        };
        let result = if layout.join("oci-layout").is_file() && layout.join("index.json").is_file() {
            self.import_oci(&layout, name, ids, progress)
        } else if layout.join("manifest.json").is_file() {
            self.import_docker(&layout, name, ids, progress)
        } else {
            Err(ImageError::UnknownFormat(path.to_path_buf()))
        };
        let _ = fs::remove_dir_all(&staging);
        let record = result?;
        refs.id_shift = Some((ids.uid, ids.gid));
        if let Some(old) = refs.images.insert(record.name.clone(), record.clone()) {
            let named = |d: &str| refs.images.values().any(|r| r.manifest_digest == d);
            if !named(&old.manifest_digest)
                && !refs
                    .retired
                    .iter()
                    .any(|r| r.manifest_digest == old.manifest_digest)
            {
                refs.retired.push(old);
            }
        }
        self.save_refs(&refs)?;
        Ok(record)
    }

    fn import_oci(
        &self,
        layout: &Path,
        name: Option<&str>,
        ids: IdShift,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        let index: serde_json::Value =
            serde_json::from_slice(&read_limited(&layout.join("index.json"), MAX_JSON_BYTES)?)
                .map_err(|e| invalid("index.json", e.to_string()))?;
        let manifests = index["manifests"]
            .as_array()
            .ok_or_else(|| invalid("index.json", "no `manifests`"))?;
        let wanted_tag = name.and_then(|n| n.rsplit_once(':').map(|(_, t)| t.to_string()));
        let chosen = manifests
            .iter()
            .find(|m| {
                wanted_tag.is_some()
                    && m["annotations"]["org.opencontainers.image.ref.name"].as_str()
                        == wanted_tag.as_deref()
            })
            .or_else(|| manifests.first())
            .ok_or_else(|| invalid("index.json", "no manifest"))?;
        let ref_name = chosen["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .map(str::to_string);
        let name = match (name, ref_name) {
            (Some(n), _) => normalise_name(n)?,
            (None, Some(r)) => normalise_name(&r)?,
            (None, None) => return Err(ImageError::NoName),
        };
        let blob = |digest: &str| -> Result<PathBuf> {
            Ok(layout.join("blobs/sha256").join(digest_hex(digest)?))
        };
        let manifest_digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| invalid("index.json", "manifest without digest"))?
            .to_string();
        let manifest_path = self.ingest(&blob(&manifest_digest)?, &manifest_digest)?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&read_limited(&manifest_path, MAX_JSON_BYTES)?)
                .map_err(|e| invalid(format!("manifest {manifest_digest}"), e.to_string()))?;
        if manifest["manifests"].is_array() {
            return Err(invalid(
                format!("manifest {manifest_digest}"),
                "a multi-platform index; copy one platform (skopeo copy --override-arch ...)",
            ));
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| invalid(format!("manifest {manifest_digest}"), "no config"))?
            .to_string();
        let config_path = self.ingest(&blob(&config_digest)?, &config_digest)?;
        let config: serde_json::Value =
            serde_json::from_slice(&read_limited(&config_path, MAX_JSON_BYTES)?)
                .map_err(|e| invalid(format!("config {config_digest}"), e.to_string()))?;
        let layers: Vec<(String, String)> = manifest["layers"]
            .as_array()
            .ok_or_else(|| invalid(format!("manifest {manifest_digest}"), "no layers"))?
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap_or("").to_string(),
                    l["mediaType"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        self.finish(
            name,
            manifest_digest,
            config_digest,
            config,
            layers,
            |d| blob(d),
            ids,
            progress,
        )
    }

    fn import_docker(
        &self,
        layout: &Path,
        name: Option<&str>,
        ids: IdShift,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        let manifest_bytes = read_limited(&layout.join("manifest.json"), MAX_JSON_BYTES)?;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| invalid("manifest.json", e.to_string()))?;
        let entry = manifest
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| invalid("manifest.json", "no image"))?;
        let name = match (
            name,
            entry["RepoTags"]
                .as_array()
                .and_then(|t| t.first())
                .and_then(|t| t.as_str()),
        ) {
            (Some(n), _) => normalise_name(n)?,
            (None, Some(t)) => normalise_name(t)?,
            (None, None) => return Err(ImageError::NoName),
        };
        let inside = |rel: &str| -> Result<PathBuf> {
            let p = Path::new(rel);
            if p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(
                    "manifest.json",
                    format!("path `{rel}` leaves the archive"),
                ));
            }
            Ok(layout.join(p))
        };
        let config_rel = entry["Config"]
            .as_str()
            .ok_or_else(|| invalid("manifest.json", "no Config"))?;
        let config_file = inside(config_rel)?;
        let config_bytes = read_limited(&config_file, MAX_JSON_BYTES)?;
        let config_digest = format!("sha256:{}", hex(&Sha256::digest(&config_bytes)));
        // The config's file name is its digest in both the legacy and the OCI-style layout.
        let stem = Path::new(config_rel)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        if stem.len() == 64 && format!("sha256:{stem}") != config_digest {
            return Err(ImageError::DigestMismatch {
                digest: format!("sha256:{stem}"),
                actual: config_digest,
            });
        }
        self.ingest(&config_file, &config_digest)?;
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid("image config", e.to_string()))?;
        let mut layers = Vec::new();
        let mut sources = BTreeMap::new();
        for l in entry["Layers"]
            .as_array()
            .ok_or_else(|| invalid("manifest.json", "no Layers"))?
        {
            let rel = l
                .as_str()
                .ok_or_else(|| invalid("manifest.json", "a layer is not a path"))?;
            let file = inside(rel)?;
            let mut f = fs::File::open(&file).map_err(io(&file))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h).map_err(io(&file))?;
            let digest = format!("sha256:{}", hex(&h.finalize()));
            sources.insert(digest.clone(), file);
            layers.push((digest, String::new()));
        }
        let manifest_digest = format!("sha256:{}", hex(&Sha256::digest(&manifest_bytes)));
        self.finish(
            name,
            manifest_digest,
            config_digest,
            config,
            layers,
            |d| Ok(sources[d].clone()),
            ids,
            progress,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        name: String,
        manifest_digest: String,
        config_digest: String,
        config: serde_json::Value,
        layers: Vec<(String, String)>,
        source: impl Fn(&str) -> Result<PathBuf>,
        ids: IdShift,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        // Missing diff_ids count as none, which the check below refuses for any layer.
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(invalid(
                format!("config {config_digest}"),
                format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            ));
        }
        let mut size = 0;
        for (i, (digest, media)) in layers.iter().enumerate() {
            progress(&format!("layer {}/{} {digest}", i + 1, layers.len()));
            let blob = self.ingest(&source(digest)?, digest)?;
            size += fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
            self.unpack(digest, media, Some(&diff_ids[i]), ids)?;
        }
        let c = &config["config"];
        Ok(ImageRecord {
            name,
            manifest_digest,
            config_digest,
            layers: layers.into_iter().map(|(d, _)| d).collect(),
            size_bytes: size,
            imported_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            config: serde_json::json!({
                "Env": c["Env"], "Cmd": c["Cmd"], "Entrypoint": c["Entrypoint"], "WorkingDir": c["WorkingDir"], "User": c["User"],
            }),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.refs()?.images.into_values().collect())
    }

    /// Finds `name[:tag]` or `name@sha256:...` (the manifest digest).
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let refs = self.refs()?;
        let found = match reference.split_once('@') {
            Some((name, digest)) => refs
                .images
                .values()
                .find(|r| r.manifest_digest == digest && r.name.starts_with(&format!("{name}:")))
                .cloned(),
            None => refs.images.get(&normalise_name(reference)?).cloned(),
        };
        found.ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// The unpacked layer directories of an image, top layer first (overlayfs order).
    pub fn lower_dirs(&self, record: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for d in record.layers.iter().rev() {
            let dir = self.layer_dir(d)?;
            if !dir.is_dir() {
                return Err(invalid(
                    format!("image {}", record.name),
                    format!("layer {d} is missing from the store; import it again"),
                ));
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Holds an image for a run: until the hold is dropped, no name of its manifest can be
    /// removed (so `gc` keeps its layers). Checked again once held: an image removed
    /// between its resolution and this call is refused, never run from layers that may be
    /// going.
    pub fn hold(&self, manifest_digest: &str) -> Result<ImageHold> {
        let lock = self.shared(manifest_digest)?;
        let refs = self.refs()?;
        let record = refs
            .images
            .into_values()
            .chain(refs.retired)
            .find(|r| r.manifest_digest == manifest_digest)
            .ok_or_else(|| ImageError::Removed {
                manifest_digest: manifest_digest.to_string(),
            })?;
        self.lower_dirs(&record)?;
        Ok(ImageHold { _lock: lock })
    }

    /// The image's lock, shared, on the file that is its lock file once locked: `gc`
    /// deletes the lock files of images gone, so one opened just before may be deleted
    /// (and another made in its place) by the time it is locked.
    fn shared(&self, manifest_digest: &str) -> Result<Flock<fs::File>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join("locks").join(digest_hex(manifest_digest)?);
        for _ in 0..8 {
            let lock = Flock::lock(self.lock_file(manifest_digest)?, FlockArg::LockShared)
                .map_err(|(_, errno)| io(&path)(errno.into()))?;
            let held = lock.metadata().map_err(io(&path))?;
            match fs::symlink_metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(lock),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(invalid(
            path.display().to_string(),
            "replaced again and again while being locked",
        ))
    }

    /// Whether a run holds the image ([`ImageStore::hold`]).
    pub fn in_use(&self, record: &ImageRecord) -> Result<bool> {
        Ok(self.unheld(&record.manifest_digest)?.is_none())
    }

    /// Removes a name, unless a run holds its image or `also_in_use` says a sandbox runs
    /// on it: the checks and the removal happen under the image's lock, so no run can take
    /// it in between.
    pub fn remove(
        &self,
        reference: &str,
        also_in_use: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<ImageRecord> {
        let _store = self.exclusive()?;
        let record = self.resolve(reference)?;
        let unheld = self.unheld(&record.manifest_digest)?;
        if unheld.is_none() || also_in_use(&record) {
            return Err(ImageError::InUse { name: record.name });
        }
        let mut refs = self.refs()?;
        refs.images.remove(&record.name);
        self.save_refs(&refs)?;
        Ok(record)
    }

    /// The store's own lock (`locks/store`), held by whatever changes the names or
    /// deletes files: imports, `rm` and `gc` take turns. Runs never take it.
    fn exclusive(&self) -> Result<Flock<fs::File>> {
        let path = self.root.join("locks/store");
        let file = Self::open_lock(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io(&path)(errno.into()))
    }

    /// The image's lock, exclusive, if no run holds it.
    fn unheld(&self, manifest_digest: &str) -> Result<Option<Flock<fs::File>>> {
        let file = self.lock_file(manifest_digest)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io(&self.root.join("locks"))(errno.into())),
        }
    }

    /// The lock file of a manifest (`locks/HEX`), opened read-only: a lock needs no
    /// more, and a descriptor that leaked could not write anything.
    fn lock_file(&self, manifest_digest: &str) -> Result<fs::File> {
        Self::open_lock(&self.root.join("locks").join(digest_hex(manifest_digest)?))
    }

    fn open_lock(path: &Path) -> Result<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        // O_CREAT with read-only access: the file only carries locks.
        fs::OpenOptions::new()
            .read(true)
            .mode(0o600)
            .custom_flags(libc::O_CREAT | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(path))
    }

    /// Deletes blobs and layers no image refers to (a retired image a run still holds, or
    /// `also_in_use` says a sandbox runs on, counts as referred to); returns how many
    /// entries went.
    pub fn gc(&self, also_in_use: &dyn Fn(&ImageRecord) -> bool) -> Result<u64> {
        let _store = self.exclusive()?;
        let mut refs = self.refs()?;
        // Each retired image nobody holds is dropped, and stays locked until its files
        // are gone: a run that tries to hold it meanwhile waits, then finds it gone.
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for record in std::mem::take(&mut refs.retired) {
            match self.unheld(&record.manifest_digest)? {
                Some(lock) if !also_in_use(&record) => dropped.push(lock),
                _ => kept.push(record),
            }
        }
        refs.retired = kept;
        if !dropped.is_empty() {
            self.save_refs(&refs)?;
        }
        let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
        for r in refs.images.values().chain(&refs.retired) {
            live.insert(digest_hex(&r.manifest_digest)?.to_string());
            live.insert(digest_hex(&r.config_digest)?.to_string());
            for l in &r.layers {
                live.insert(digest_hex(l)?.to_string());
            }
        }
        let mut removed = 0;
        for dir in [self.root.join("blobs/sha256"), self.root.join("layers")] {
            for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) {
                    let p = entry.path();
                    if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    }
                    .map_err(io(&p))?;
                    removed += 1;
                }
            }
        }
        // A lock file of a manifest nothing refers to goes once nobody holds it; a run
        // that opened it just before finds no image under its lock and is refused.
        drop(dropped);
        let locks = self.root.join("locks");
        for entry in fs::read_dir(&locks).map_err(io(&locks))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "store" || live.contains(&name) {
                continue;
            }
            if let Ok(Some(_unheld)) = self.unheld(&format!("sha256:{name}")) {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{put_blob, tar_directory, write_oci_layout};
    use crate::test_fixtures::{AS_OWNERS, IDS};
    use covenant_test_support::skip_unless;

    /// A base layer with busybox-like content and an upper layer that deletes a file.
    fn layers() -> Vec<Vec<u8>> {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("bin")).unwrap();
        fs::create_dir_all(base.path().join("etc")).unwrap();
        fs::write(base.path().join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        fs::write(base.path().join("etc/motd"), b"hello\n").unwrap();
        std::os::unix::fs::symlink("tool", base.path().join("bin/alias")).unwrap();
        let upper = tempfile::tempdir().unwrap();
        fs::create_dir_all(upper.path().join("etc")).unwrap();
        fs::write(upper.path().join("etc/.wh.motd"), b"").unwrap();
        fs::write(upper.path().join("etc/added"), b"new\n").unwrap();
        vec![
            tar_directory(base.path()).unwrap(),
            tar_directory(upper.path()).unwrap(),
        ]
    }

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageStore::open(&dir.path().join("images")).unwrap();
        (dir, s)
    }

    fn tar_of(dir: &Path) -> Vec<u8> {
        tar_directory(dir).unwrap()
    }

    #[test]
    fn an_oci_layout_directory_and_tar_import_with_their_ref_name() {
        skip_unless!(AS_OWNERS);
        let (_d, s) = store();
        let layout = tempfile::tempdir().unwrap();
        write_oci_layout(&layers(), layout.path(), "tools:1", &["/bin/tool"]).unwrap();
        let record = s.import(layout.path(), None, IDS, &mut |_| {}).unwrap();
        assert_eq!(record.name, "tools:1");
        let lowers = s.lower_dirs(&record).unwrap();
        assert_eq!(lowers.len(), 2);
        assert_eq!(
            fs::read(lowers[1].join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho tool\n"
        );
        assert_eq!(fs::read(lowers[0].join("etc/added")).unwrap(), b"new\n");
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(lowers[0].join("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device());
        let archive = tempfile::tempdir().unwrap();
        let tar_path = archive.path().join("image.tar");
        fs::write(&tar_path, tar_of(layout.path())).unwrap();
        let again = s
            .import(&tar_path, Some("tools:tar"), IDS, &mut |_| {})
            .unwrap();
        assert_eq!(again.manifest_digest, record.manifest_digest);
        assert_eq!(s.resolve("tools:tar").unwrap().name, "tools:tar");
        assert_eq!(
            s.resolve(&format!("tools@{}", record.manifest_digest))
                .unwrap()
                .manifest_digest,
            record.manifest_digest
        );
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn a_docker_save_tar_imports_by_its_repo_tag() {
        skip_unless!(AS_OWNERS);
        let (_d, s) = store();
        let dir = tempfile::tempdir().unwrap();
        let l = layers();
        let mut diff_ids = Vec::new();
        let mut paths = Vec::new();
        for (i, layer) in l.iter().enumerate() {
            diff_ids.push(format!("sha256:{}", hex(&Sha256::digest(layer))));
            fs::create_dir_all(dir.path().join(format!("l{i}"))).unwrap();
            fs::write(dir.path().join(format!("l{i}/layer.tar")), layer).unwrap();
            paths.push(format!("l{i}/layer.tar"));
        }
        let config = serde_json::to_vec(&serde_json::json!({"config": {"Cmd": ["sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})).unwrap();
        let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
        fs::write(dir.path().join(&config_name), &config).unwrap();
        fs::write(
            dir.path().join("manifest.json"),
            serde_json::to_vec(&serde_json::json!([{"Config": config_name, "RepoTags": ["busy:box"], "Layers": paths}])).unwrap(),
        )
        .unwrap();
        let archive = tempfile::tempdir().unwrap();
        let tar_path = archive.path().join("save.tar");
        fs::write(&tar_path, tar_of(dir.path())).unwrap();
        let record = s.import(&tar_path, None, IDS, &mut |_| {}).unwrap();
        assert_eq!(record.name, "busy:box");
        assert_eq!(record.layers.len(), 2);
    }

    #[test]
    fn a_blob_whose_content_does_not_match_its_digest_is_refused() {
        let (_d, s) = store();
        let layout = tempfile::tempdir().unwrap();
        write_oci_layout(&layers(), layout.path(), "t:1", &["sh"]).unwrap();
        // Replace a layer blob's bytes, keeping its name.
        let blobs = layout.path().join("blobs/sha256");
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
        let mdigest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blobs.join(&mdigest)).unwrap()).unwrap();
        let layer = manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        fs::write(blobs.join(&layer), b"not the layer").unwrap();
        let err = s.import(layout.path(), None, IDS, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(s.list().unwrap().is_empty(), "nothing stored");
    }

    #[test]
    fn a_layer_that_differs_from_its_diff_id_is_refused() {
        skip_unless!(AS_OWNERS);
        let (_d, s) = store();
        let layout = tempfile::tempdir().unwrap();
        write_oci_layout(&layers(), layout.path(), "t:1", &["sh"]).unwrap();
        // A consistent blob/manifest/config chain whose config lies about diff_ids.
        let l = layers();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&l[0]).unwrap();
        let blob = gz.finish().unwrap();
        let out = tempfile::tempdir().unwrap();
        let layer_digest = put_blob(out.path(), &blob).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]}})).unwrap();
        let config_digest = put_blob(out.path(), &config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "config": {"digest": config_digest}, "layers": [{"digest": layer_digest, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}]})).unwrap();
        let mdigest = put_blob(out.path(), &manifest).unwrap();
        fs::write(
            out.path().join("index.json"),
            serde_json::to_vec(&serde_json::json!({"manifests": [{"digest": mdigest}]})).unwrap(),
        )
        .unwrap();
        fs::write(out.path().join("oci-layout"), b"{}").unwrap();
        let err = s
            .import(out.path(), Some("liar:1"), IDS, &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
        assert!(
            !s.layer_dir(&layer_digest).unwrap().exists(),
            "a refused layer is not kept"
        );
    }

    #[test]
    fn an_archive_with_a_hostile_entry_is_refused_and_writes_nothing_outside() {
        let (d, s) = store();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let name = b"../../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let path = d.path().join("hostile.tar");
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        let err = s.import(&path, Some("x:1"), IDS, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("../../escaped"), "{err}");
        assert!(
            !d.path().join("escaped").exists()
                && !d.path().parent().unwrap().join("escaped").exists()
        );
    }

    #[test]
    fn rm_refuses_an_image_in_use_and_gc_drops_what_nothing_names() {
        skip_unless!(AS_OWNERS);
        let (_d, s) = store();
        let layout = tempfile::tempdir().unwrap();
        write_oci_layout(&layers(), layout.path(), "t:1", &["sh"]).unwrap();
        let record = s.import(layout.path(), None, IDS, &mut |_| {}).unwrap();
        let held = s.hold(&record.manifest_digest).unwrap();
        assert!(s.in_use(&record).unwrap());
        // Another local user can neither list, create nor lock the store's locks.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.root.join("locks")), 0o700);
        let hex = digest_hex(&record.manifest_digest).unwrap();
        assert_eq!(mode(&s.root.join("locks").join(hex)), 0o600);
        let err = s.remove("t:1", &|_| false).unwrap_err();
        assert!(matches!(err, ImageError::InUse { .. }), "{err}");
        // A second run holds it too: holds are shared.
        let second = s.hold(&record.manifest_digest).unwrap();
        assert_eq!(s.gc(&|_| false).unwrap(), 0);
        drop(held);
        s.remove("t:1", &|_| false).unwrap_err();
        drop(second);
        assert!(!s.in_use(&record).unwrap());
        s.remove("t", &|_| false).unwrap_err();
        // Unheld, but a sandbox whose supervisor is gone runs on it.
        let err = s.remove("t:1", &|r| r.name == "t:1").unwrap_err();
        assert!(matches!(err, ImageError::InUse { .. }), "{err}");
        s.remove("t:1", &|_| false).unwrap();
        // A run that resolved the image before it went cannot hold it now.
        let err = s.hold(&record.manifest_digest).unwrap_err();
        assert!(matches!(err, ImageError::Removed { .. }), "{err}");
        assert!(
            s.gc(&|_| false).unwrap() >= 4,
            "manifest, config, two layer blobs and two layers"
        );
        assert!(!s.blob_path(&record.config_digest).unwrap().exists());
        let locks: Vec<_> = fs::read_dir(s.root.join("locks"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(locks, ["store"], "gc left the removed image's lock file");
    }

    /// An import that takes a name from an image a run holds leaves that image's layers
    /// until the run lets go.
    #[test]
    fn a_held_image_whose_name_is_taken_keeps_its_layers_until_let_go() {
        skip_unless!(AS_OWNERS);
        let (_d, s) = store();
        let first = tempfile::tempdir().unwrap();
        write_oci_layout(&layers(), first.path(), "t:1", &["sh"]).unwrap();
        let old = s.import(first.path(), None, IDS, &mut |_| {}).unwrap();
        let held = s.hold(&old.manifest_digest).unwrap();
        let extra = tempfile::tempdir().unwrap();
        fs::write(extra.path().join("new"), b"new\n").unwrap();
        let mut newer = layers();
        newer.push(tar_directory(extra.path()).unwrap());
        let second = tempfile::tempdir().unwrap();
        write_oci_layout(&newer, second.path(), "t:1", &["sh"]).unwrap();
        let new = s.import(second.path(), None, IDS, &mut |_| {}).unwrap();
        assert_ne!(new.manifest_digest, old.manifest_digest);
        assert_eq!(s.resolve("t:1").unwrap(), new);

        s.gc(&|_| false).unwrap();
        assert!(s.lower_dirs(&old).is_ok(), "gc took a held image's layers");
        // A second run that resolved the old image before the import still gets it.
        let again = s.hold(&old.manifest_digest).unwrap();
        drop((held, again));
        assert!(s.gc(&|_| false).unwrap() >= 1, "the old manifest went");
        assert!(s
            .blob_path(&old.manifest_digest)
            .map(|p| !p.exists())
            .unwrap());
        let err = s.hold(&old.manifest_digest).unwrap_err();
        assert!(matches!(err, ImageError::Removed { .. }), "{err}");
        assert!(
            s.lower_dirs(&new).is_ok(),
            "gc took the image that is named"
        );
    }
}
