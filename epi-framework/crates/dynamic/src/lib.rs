//! Third-party plugins as dynamic libraries, behind a versioned, checked C ABI.
//!
//! A plugin library exports two **data** symbols (statics, not functions, so the version can be
//! checked without running any of the plugin's code):
//!
//! ```c
//! const uint32_t epi_plugin_abi_version = 1;        /* EPI_PLUGIN_ABI_VERSION */
//! const EpiPluginV1 epi_plugin_v1 = { ... };         /* the descriptor below */
//! ```
//!
//! ```c
//! typedef struct {
//!   uint32_t abi_version;        /* 1, again: checked too */
//!   uint32_t kind;               /* 1 = power source (the only kind of ABI v1) */
//!   const char *key;             /* registry key, NUL-terminated UTF-8 */
//!   const char *description;
//!   void *(*create)(const char *config_json, char **err);
//!   char *(*open)(void *inst, char **err);                        /* SourceInfo JSON */
//!   char *(*next_batch)(void *inst, uint32_t timeout_ms, char **err); /* {"samples":[...],"events":[...]} or "null" */
//!   void  (*close)(void *inst);
//!   void  (*free_string)(char *s);  /* frees strings the plugin returned (results and errors) */
//! } EpiPluginV1;
//! ```
//!
//! JSON shapes are the serde forms of [`SourceInfo`], [`PowerSample`] and [`SourceEvent`]. A
//! library whose `epi_plugin_abi_version` is not [`ABI_VERSION`], that lacks either symbol, or whose
//! descriptor disagrees is refused before any of its functions is called. (Loading a library runs
//! its static initialisers, as any `dlopen` does: load only libraries you trust.)
//!
//! Before it is opened at all, a library must sit where nobody but the user and root could have
//! written or replaced it ([`check_location`]): the file (symbolic links resolved) and every
//! directory above it owned by the user or by root, the file and its own directory not writable
//! by every user, and no directory above writable by every user unless it has the sticky bit
//! (like `/tmp`, where others cannot rename what they do not own). Otherwise it is refused, with
//! the offending path, its owner or mode, and nothing of it is loaded.
#![deny(missing_docs)]

use async_trait::async_trait;
use epi_core::error::Error;
use epi_core::power::{PowerError, PowerSource};
use epi_core::registry::{
    DynPowerFactory, Entry, EntryFactory, Origin, PluginConfig, PluginKind, Registry,
};
use epi_core::sample::{PowerSample, SampleBatch, SourceEvent, SourceInfo, SourceStats};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The ABI version this build of epi-bench speaks.
pub const ABI_VERSION: u32 = 1;

/// Plugin kind code for a power source.
pub const KIND_POWER: u32 = 1;

/// The descriptor a plugin exports as `epi_plugin_v1`.
#[repr(C)]
pub struct EpiPluginV1 {
    /// Must be [`ABI_VERSION`].
    pub abi_version: u32,
    /// [`KIND_POWER`].
    pub kind: u32,
    /// Registry key.
    pub key: *const c_char,
    /// One-line description.
    pub description: *const c_char,
    /// Creates an instance from JSON configuration; null and `*err` on failure.
    pub create:
        unsafe extern "C" fn(config_json: *const c_char, err: *mut *mut c_char) -> *mut c_void,
    /// Opens the instrument; returns `SourceInfo` JSON.
    pub open: unsafe extern "C" fn(inst: *mut c_void, err: *mut *mut c_char) -> *mut c_char,
    /// Next batch as JSON, `null` at the end.
    pub next_batch: unsafe extern "C" fn(
        inst: *mut c_void,
        timeout_ms: u32,
        err: *mut *mut c_char,
    ) -> *mut c_char,
    /// Closes and frees the instance.
    pub close: unsafe extern "C" fn(inst: *mut c_void),
    /// Frees a string the plugin returned.
    pub free_string: unsafe extern "C" fn(s: *mut c_char),
}

// The descriptor is immutable static data of the library.
unsafe impl Sync for EpiPluginV1 {}

struct Library {
    // Keeps the library mapped while any instance lives.
    _lib: libloading::Library,
    desc: *const EpiPluginV1,
    key: String,
}

unsafe impl Send for Library {}
unsafe impl Sync for Library {}

fn refuse(path: &Path, msg: impl Into<String>) -> Error {
    Error::Plugin {
        plugin: path.display().to_string(),
        message: msg.into(),
    }
}

/// Loads a plugin library and adds what it declares to `registry`. Refuses (without calling into
/// the library) a missing or wrong ABI version, an unknown kind, or a malformed descriptor.
pub fn load_into(registry: &mut Registry, path: &Path) -> Result<(), Error> {
    let lib = Arc::new(open_checked(path)?);
    let desc = unsafe { &*lib.desc };
    let description = unsafe { cstr(desc.description) }.unwrap_or_default();
    let key = lib.key.clone();
    let lib2 = lib.clone();
    let factory: DynPowerFactory = Arc::new(move |cfg: &PluginConfig| {
        DynamicPowerSource::create(lib2.clone(), cfg).map(|s| Box::new(s) as _)
    });
    registry.add(Entry {
        key,
        kind: PluginKind::Power,
        description,
        origin: Origin::Dynamic {
            path: path.to_path_buf(),
            abi_version: desc.abi_version,
        },
        factory: EntryFactory::DynamicPower(factory),
        describe: None,
        toml_aliases: Vec::new(),
        capabilities: Vec::new(),
    })
}

/// Refuses a library someone other than the user or root could have written or replaced (see
/// the module documentation); returns its resolved path, the one to load.
pub fn check_location(path: &Path) -> Result<std::path::PathBuf, Error> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| refuse(path, format!("cannot load library: {e}")))?;
    let meta = std::fs::metadata(&real)
        .map_err(|e| refuse(path, format!("cannot read {}: {e}", real.display())))?;
    if !meta.is_file() {
        return Err(refuse(
            path,
            format!("{} is not a regular file", real.display()),
        ));
    }
    check_entry(path, &real, &meta, "the library", false)?;
    let mut own_dir = true;
    let mut dir = real.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d)
            .map_err(|e| refuse(path, format!("cannot read {}: {e}", d.display())))?;
        let what = if own_dir {
            "its directory"
        } else {
            "the directory above it"
        };
        check_entry(path, d, &m, what, !own_dir)?;
        own_dir = false;
        dir = d.parent();
    }
    Ok(real)
}

#[cfg(unix)]
fn check_entry(
    lib: &Path,
    p: &Path,
    m: &std::fs::Metadata,
    what: &str,
    sticky_ok: bool,
) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let owner = m.uid();
    if owner != me && owner != 0 {
        return Err(refuse(
            lib,
            format!(
                "{what} {} is owned by uid {owner}, neither you (uid {me}) nor root: refused, not loaded",
                p.display()
            ),
        ));
    }
    let mode = m.mode();
    let world_writable = mode & 0o002 != 0;
    let sticky = mode & 0o1000 != 0;
    if world_writable && !(sticky_ok && sticky) {
        return Err(refuse(
            lib,
            format!(
                "{what} {} is writable by every user (mode {:04o}): refused, not loaded",
                p.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_entry(
    _lib: &Path,
    _p: &Path,
    _m: &std::fs::Metadata,
    _what: &str,
    _sticky_ok: bool,
) -> Result<(), Error> {
    Ok(())
}

fn open_checked(path: &Path) -> Result<Library, Error> {
    let real = check_location(path)?;
    let lib = unsafe { libloading::Library::new(&real) }
        .map_err(|e| refuse(path, format!("cannot load library: {e}")))?;
    let version: u32 = unsafe {
        let sym = lib
            .get::<*const u32>(b"epi_plugin_abi_version\0")
            .map_err(|_| {
                refuse(
                    path,
                    "not an epi-bench plugin: no `epi_plugin_abi_version` symbol",
                )
            })?;
        let p: *const u32 = *sym;
        if p.is_null() {
            return Err(refuse(path, "`epi_plugin_abi_version` is null"));
        }
        std::ptr::read_volatile(p)
    };
    if version != ABI_VERSION {
        return Err(refuse(
            path,
            format!("plugin ABI version {version}, this epi-bench speaks version {ABI_VERSION}: refused, not called"),
        ));
    }
    let desc: *const EpiPluginV1 = unsafe {
        let sym = lib
            .get::<*const EpiPluginV1>(b"epi_plugin_v1\0")
            .map_err(|_| refuse(path, "no `epi_plugin_v1` descriptor symbol"))?;
        *sym
    };
    if desc.is_null() {
        return Err(refuse(path, "`epi_plugin_v1` is null"));
    }
    let d = unsafe { &*desc };
    if d.abi_version != ABI_VERSION {
        return Err(refuse(
            path,
            format!(
                "descriptor says ABI version {}, expected {ABI_VERSION}",
                d.abi_version
            ),
        ));
    }
    if d.kind != KIND_POWER {
        return Err(refuse(
            path,
            format!(
                "plugin kind {} is not supported by ABI v1 (1 = power source)",
                d.kind
            ),
        ));
    }
    let key =
        unsafe { cstr(d.key) }.ok_or_else(|| refuse(path, "descriptor key is not UTF-8 text"))?;
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(refuse(
            path,
            format!("plugin key `{key}` must be non-empty [A-Za-z0-9_-]"),
        ));
    }
    Ok(Library {
        _lib: lib,
        desc,
        key,
    })
}

unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    CStr::from_ptr(p).to_str().ok().map(|s| s.to_string())
}

struct Instance {
    lib: Arc<Library>,
    ptr: *mut c_void,
}

unsafe impl Send for Instance {}

impl Instance {
    fn desc(&self) -> &EpiPluginV1 {
        unsafe { &*self.lib.desc }
    }

    /// Takes ownership of a plugin string: copies it and frees the original.
    fn take(&self, s: *mut c_char) -> Option<String> {
        if s.is_null() {
            return None;
        }
        let out = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
        unsafe { (self.desc().free_string)(s) };
        Some(out)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            unsafe { (self.desc().close)(self.ptr) };
            self.ptr = std::ptr::null_mut();
        }
    }
}

/// A power source backed by a dynamic library.
pub struct DynamicPowerSource {
    key: String,
    inst: Arc<Mutex<Instance>>,
    stats: SourceStats,
}

impl DynamicPowerSource {
    fn create(lib: Arc<Library>, cfg: &PluginConfig) -> Result<DynamicPowerSource, Error> {
        let key = lib.key.clone();
        let json = CString::new(serde_json::to_string(cfg).unwrap_or_else(|_| "null".into()))
            .map_err(|_| Error::Plugin {
                plugin: key.clone(),
                message: "configuration contains NUL".into(),
            })?;
        let mut err: *mut c_char = std::ptr::null_mut();
        let desc = unsafe { &*lib.desc };
        let ptr = unsafe { (desc.create)(json.as_ptr(), &mut err) };
        let mut inst = Instance {
            lib,
            ptr: std::ptr::null_mut(),
        };
        if ptr.is_null() {
            let msg = inst.take(err).unwrap_or_else(|| "create failed".into());
            return Err(Error::Plugin {
                plugin: key,
                message: msg,
            });
        }
        inst.ptr = ptr;
        Ok(DynamicPowerSource {
            key,
            inst: Arc::new(Mutex::new(inst)),
            stats: SourceStats::default(),
        })
    }

    fn call(
        inst: &Arc<Mutex<Instance>>,
        key: &str,
        f: impl FnOnce(&Instance, *mut *mut c_char) -> *mut c_char,
    ) -> Result<String, PowerError> {
        let guard = inst.lock().map_err(|_| PowerError::Io {
            source_key: key.into(),
            message: "plugin poisoned".into(),
        })?;
        let mut err: *mut c_char = std::ptr::null_mut();
        let out = f(&guard, &mut err);
        if out.is_null() {
            let msg = guard
                .take(err)
                .unwrap_or_else(|| "plugin call failed".into());
            return Err(PowerError::Io {
                source_key: key.into(),
                message: msg,
            });
        }
        guard.take(out).ok_or_else(|| PowerError::Io {
            source_key: key.into(),
            message: "null result".into(),
        })
    }
}

#[derive(serde::Deserialize)]
struct BatchJson {
    #[serde(default)]
    samples: Vec<PowerSample>,
    #[serde(default)]
    events: Vec<SourceEvent>,
}

#[async_trait]
impl PowerSource for DynamicPowerSource {
    async fn open(&mut self) -> Result<SourceInfo, PowerError> {
        let inst = self.inst.clone();
        let key = self.key.clone();
        let text = tokio::task::spawn_blocking(move || {
            DynamicPowerSource::call(&inst, &key, |i, err| unsafe { (i.desc().open)(i.ptr, err) })
        })
        .await
        .map_err(|e| PowerError::Io {
            source_key: self.key.clone(),
            message: e.to_string(),
        })??;
        let mut info: SourceInfo =
            serde_json::from_str(&text).map_err(|e| PowerError::Measurement {
                source_key: self.key.clone(),
                message: format!("plugin returned invalid SourceInfo JSON: {e}"),
            })?;
        info.source = self.key.clone();
        Ok(info)
    }

    async fn next_batch(&mut self) -> Result<Option<SampleBatch>, PowerError> {
        let inst = self.inst.clone();
        let key = self.key.clone();
        let text = tokio::task::spawn_blocking(move || {
            DynamicPowerSource::call(&inst, &key, |i, err| unsafe {
                (i.desc().next_batch)(i.ptr, 1000, err)
            })
        })
        .await
        .map_err(|e| PowerError::Io {
            source_key: self.key.clone(),
            message: e.to_string(),
        })??;
        if text.trim() == "null" {
            return Ok(None);
        }
        let b: BatchJson = serde_json::from_str(&text).map_err(|e| PowerError::Measurement {
            source_key: self.key.clone(),
            message: format!("plugin returned an invalid batch: {e}"),
        })?;
        for s in &b.samples {
            if !(s.watts.is_finite() && s.watts >= 0.0) {
                return Err(PowerError::Measurement {
                    source_key: self.key.clone(),
                    message: format!("plugin reported {} W on channel {}", s.watts, s.channel),
                });
            }
        }
        self.stats.samples += b.samples.len() as u64;
        Ok(Some(SampleBatch {
            samples: b.samples,
            events: b.events,
        }))
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    async fn close(&mut self) -> Result<(), PowerError> {
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn lib_in(dir: &Path) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        chmod(dir, 0o755);
        let p = dir.join("libx.so");
        std::fs::write(&p, b"not really a library").unwrap();
        chmod(&p, 0o644);
        p
    }

    fn refused(p: &Path) -> String {
        check_location(p).unwrap_err().to_string()
    }

    #[test]
    fn a_library_only_the_user_can_write_passes() {
        let t = tempfile::tempdir().unwrap();
        let p = lib_in(&t.path().join("plugins"));
        assert_eq!(
            check_location(&p).unwrap(),
            std::fs::canonicalize(&p).unwrap()
        );
        // Through a symbolic link, the real file is what is checked and loaded.
        let link = t.path().join("link.so");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(check_location(&link).unwrap(), check_location(&p).unwrap());
    }

    #[test]
    fn world_writable_files_and_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = lib_in(&t.path().join("open"));
        chmod(&p, 0o666);
        let e = refused(&p);
        assert!(
            e.contains("the library") && e.contains("writable by every user (mode 0666)"),
            "{e}"
        );
        chmod(&p, 0o644);
        chmod(&t.path().join("open"), 0o777);
        let e = refused(&p);
        assert!(
            e.contains("its directory") && e.contains("mode 0777") && e.contains("not loaded"),
            "{e}"
        );
        // Sticky does not make the library's own directory safe (anyone may add files there) ...
        chmod(&t.path().join("open"), 0o1777);
        assert!(refused(&p).contains("mode 1777"));
        // ... but a sticky world-writable directory further up (like /tmp) is fine, and a plain
        // world-writable one is not.
        let deep = lib_in(&t.path().join("up").join("lib"));
        chmod(&t.path().join("up"), 0o1777);
        assert!(check_location(&deep).is_ok());
        chmod(&t.path().join("up"), 0o777);
        let e = refused(&deep);
        assert!(
            e.contains("the directory above it") && e.contains("mode 0777"),
            "{e}"
        );
        chmod(&t.path().join("up"), 0o755);
    }

    #[test]
    fn a_library_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Only root can give a file away; CI runs as root.
            assert!(
                std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_none(),
                "this test needs root (EPI_REQUIRE_SYSTEM_TOOLS is set)"
            );
            eprintln!("skipping: needs root to chown");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = lib_in(&t.path().join("theirs"));
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let e = refused(&p);
        assert!(
            e.contains("owned by uid 65534") && e.contains("refused"),
            "{e}"
        );
        std::os::unix::fs::chown(&p, Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(t.path().join("theirs"), Some(65534), None).unwrap();
        let e = refused(&p);
        assert!(
            e.contains("its directory") && e.contains("uid 65534"),
            "{e}"
        );
    }
}
