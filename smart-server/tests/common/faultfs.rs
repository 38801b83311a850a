//! The fault layer: `faultfs.c`, an `LD_PRELOAD` shim built here with the system C compiler (`cc`,
//! or `$CC`), that makes the real server's writes, syncs, truncations or opens under one directory
//! fail (or syncs block) while a control file exists. See the C source for the modes.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SOURCE: &str = include_str!("faultfs.c");

/// Build the shim once per test process; returns the shared object.
fn shim() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faultfs");
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::process::id();
        let source = dir.join(format!("faultfs-{id}.c"));
        std::fs::write(&source, SOURCE).unwrap();
        let built = dir.join(format!("faultfs-{id}.so"));
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let output = std::process::Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&built)
            .arg(&source)
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "the fault tests need a C compiler ({}): {e}",
                    cc.to_string_lossy()
                )
            });
        assert!(
            output.status.success(),
            "building the fault shim failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        built
    })
}

/// Faults for one server: the files under `watched` fail while a mode is switched on.
pub struct Faults {
    ctl: tempfile::TempDir,
    watched: PathBuf,
    log: Option<PathBuf>,
}

/// A fault mode (see `faultfs.c`).
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Writes fail with ENOSPC after tearing half of what they were given.
    Enospc,
    /// fsync/fdatasync fail with EIO.
    EioSync,
    /// fsync/fdatasync block until switched off.
    BlockSync,
    /// The next fsync/fdatasync fails with EIO; then the mode is off by itself.
    EioOnce,
    /// ftruncate fails with EIO.
    EioTrunc,
    /// Opening a path under the directory fails with EMFILE.
    Emfile,
}

impl Mode {
    fn file(self) -> &'static str {
        match self {
            Mode::Enospc => "enospc",
            Mode::EioSync => "eio_sync",
            Mode::BlockSync => "block_sync",
            Mode::EioOnce => "eio_once",
            Mode::EioTrunc => "eio_trunc",
            Mode::Emfile => "emfile",
        }
    }
}

impl Faults {
    /// Faults for everything under `watched` (created if missing), all modes off.
    pub fn new(watched: &Path) -> Faults {
        std::fs::create_dir_all(watched).unwrap();
        Faults {
            ctl: tempfile::tempdir().unwrap(),
            watched: watched.canonicalize().unwrap(),
            log: None,
        }
    }

    /// Also record every fsync/fdatasync of a watched descriptor (see [`Faults::synced`]).
    pub fn with_sync_log(mut self) -> Faults {
        self.log = Some(self.ctl.path().join("syncs.log"));
        self
    }

    /// The canonical watched directory (the paths the shim sees).
    pub fn watched(&self) -> &Path {
        &self.watched
    }

    /// The environment that loads the shim into a child process.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = vec![
            ("LD_PRELOAD", shim().as_os_str().to_owned()),
            ("FAULTFS_DIR", self.watched.as_os_str().to_owned()),
            ("FAULTFS_CTL", self.ctl.path().as_os_str().to_owned()),
        ];
        if let Some(log) = &self.log {
            env.push(("FAULTFS_LOG", log.as_os_str().to_owned()));
        }
        env
    }

    pub fn on(&self, mode: Mode) {
        std::fs::write(self.ctl.path().join(mode.file()), b"").unwrap();
    }

    pub fn off(&self, mode: Mode) {
        std::fs::remove_file(self.ctl.path().join(mode.file())).unwrap();
    }

    /// The paths fsync'd so far, with the call (`fsync` or `fdatasync`).
    pub fn synced(&self) -> Vec<(String, PathBuf)> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(call, path)| (call.to_owned(), PathBuf::from(path)))
            .collect()
    }
}
