//! Writing images: a directory packed as a single-layer OCI image layout (what
//! `covenant-ctl image pack` does, and what the tests build their images with, offline).

use covenant_policy::plan::hex;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("packing {path}: {error}")]
pub struct PackError {
    path: String,
    error: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |error| PackError {
        path: path.display().to_string(),
        error,
    }
}

/// Writes `blob` under `out/blobs/sha256/` and returns its digest.
pub fn put_blob(out: &Path, blob: &[u8]) -> Result<String, PackError> {
    let hex = hex(&Sha256::digest(blob));
    let dir = out.join("blobs/sha256");
    fs::create_dir_all(&dir).map_err(err(&dir))?;
    let path = dir.join(&hex);
    fs::write(&path, blob).map_err(err(&path))?;
    Ok(format!("sha256:{hex}"))
}

/// An uncompressed tar of `dir`'s contents (owners 0:0, symlinks kept as symlinks).
pub fn tar_directory(dir: &Path) -> Result<Vec<u8>, PackError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", dir).map_err(err(dir))?;
    builder.into_inner().map_err(err(dir))
}

/// Packs `layers` (uncompressed tars, base first) as an OCI image layout at `out`, with
/// gzip-compressed layer blobs and `ref_name` as the index's
/// `org.opencontainers.image.ref.name`.
pub fn write_oci_layout(
    layers: &[Vec<u8>],
    out: &Path,
    ref_name: &str,
    cmd: &[&str],
) -> Result<String, PackError> {
    fs::create_dir_all(out).map_err(err(out))?;
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(format!("sha256:{}", hex(&Sha256::digest(layer))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(layer).map_err(err(out))?;
        let blob = gz.finish().map_err(err(out))?;
        let digest = put_blob(out, &blob)?;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": blob.len(),
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("serialisable");
    let config_digest = put_blob(out, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    }))
    .expect("serialisable");
    let manifest_digest = put_blob(out, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    let path = out.join("index.json");
    fs::write(&path, serde_json::to_vec(&index).expect("serialisable")).map_err(err(&path))?;
    let path = out.join("oci-layout");
    fs::write(&path, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(err(&path))?;
    Ok(manifest_digest)
}
