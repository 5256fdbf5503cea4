//! A full disk: [`SmallDisk`], a 256 KiB tmpfs mounted for the test and filled on demand,
//! unmounted on drop. Needs root and `mount`; the caller skips (or fails, in CI) without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A 256 KiB tmpfs mounted for the test (as root; CI runs as root), unmounted on drop.
pub(crate) struct SmallDisk {
    pub(crate) path: PathBuf,
}

impl SmallDisk {
    /// `None` (the test skips, saying why) when mounting is not permitted here, unless
    /// `EPI_REQUIRE_SYSTEM_TOOLS` is set: then the test fails.
    pub(crate) fn mount(dir: &Path) -> Option<SmallDisk> {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&path)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(SmallDisk { path }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
                    "mounting a 256 KiB tmpfs failed (EPI_REQUIRE_SYSTEM_TOOLS is set; the disk-full tests need root): {why}"
                );
                eprintln!("skipping: cannot mount a tmpfs here (needs root): {why}");
                None
            }
        }
    }

    /// Fills what is left with one file, until the file system says it is full.
    pub(crate) fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("filler")).expect("create the filler");
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|_| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }

    /// Files a failed atomic write would leave behind (`.NAME.tmpPID`).
    pub(crate) fn stray_temporaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else if name.starts_with('.') && name.contains(".tmp") {
                    out.push(e.path().display().to_string());
                }
            }
        }
        out
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
