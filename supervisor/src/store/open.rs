//! Opening the store: its folder, its key, its private files, WAL, and the schema migrated
//! forward.

use super::error::{Result, StoreError};
use super::handle::{CheckpointPolicy, Store};
use super::schema;
use crate::home::covenant_home;
use crate::keys;
use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use std::path::Path;

impl Store {
    /// The default store: `$COVENANT_HOME/covenant.db`, signing with
    /// `$COVENANT_HOME/supervisor.key` (created on first use).
    pub fn open_default() -> Result<Self> {
        let home = covenant_home();
        Self::open(&home.join("covenant.db"), &home.join("supervisor.key"))
    }

    /// The default store, opened to read only (`audit verify`, `tail`, `show`, `export`):
    /// it writes nothing, not even a closing checkpoint.
    pub fn open_default_reader() -> Result<Self> {
        let home = covenant_home();
        Self::open_reader(&home.join("covenant.db"), &home.join("supervisor.key"))
    }

    /// The store at `path`, opened to read only: it writes nothing, not even a closing
    /// checkpoint.
    pub fn open_reader(path: &Path, key_path: &Path) -> Result<Self> {
        let mut store = Self::open(path, key_path)?;
        store.writer = false;
        Ok(store)
    }

    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path, key_path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| StoreError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        let key = load_or_create_key(key_path)?;
        create_private(path)?;
        let conn = Connection::open(path).map_err(|error| StoreError::Sqlite {
            path: path.to_path_buf(),
            error,
        })?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            key,
            head_file: path.with_extension("head"),
            policy: CheckpointPolicy::default(),
            since_checkpoint: 0,
            last_checkpoint: std::time::Instant::now(),
            writer: true,
        };
        store.configure()?;
        schema::migrate(&mut store)?;
        Ok(store)
    }
}

/// Creates the database file 0600 if it does not exist, before SQLite opens it: SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so all three are private
/// from the moment they exist. Files an older build left readable by others are
/// tightened to their owner.
fn create_private(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| StoreError::Io { path, error }
    };
    // Only a file that does not exist yet is opened here. Closing any descriptor of the
    // database drops every POSIX lock this process holds on it, the SQLite connections'
    // own included, so an existing file is never opened outside SQLite.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(db)(e)),
    }
    for file in super::handle::store_files(db) {
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_file() => m,
            _ => continue,
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(io(&file))?;
        }
    }
    Ok(())
}

fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    Ok(keys::key_created_on_first_use(path)?)
}
