//! Target `dynamic_plugin`: what epi-bench reads from a third-party plugin library
//! (`epi_framework::dynamic`, ABI v1) — the version numbers and the descriptor's kind, key and
//! description strings, then the JSON strings its functions return (the create error, `SourceInfo`
//! from `open`, `{"samples":[...],"events":[...]}` or `null` from `next_batch`, error strings) —
//! with a real library loaded with `dlopen`: `script_plugin.c`, compiled with the system C
//! compiler once per machine, whose answers the input scripts. The host either refuses the
//! library, or loads it and then builds, opens and reads the source, each step ending in a value
//! or a typed error; every sample it passes on must be one a recorded trace can hold.
//!
//! Input: one byte (0xFE: the library declares ABI 2; 0xFD: its descriptor says ABI 7; 0xFC: kind
//! 2; else a well-formed plugin), then the answers separated by NUL bytes: key, description,
//! create error (empty: none), open, then one per `next_batch` call. An answer starting with `!`
//! is returned as an error with the rest as its message.

use crate::support::{assert_recorded_trace_reads_back, verbose, Order};
use epi_framework::dynamic::load_into;
use epi_framework::error::Error;
use epi_framework::power::PowerError;
use epi_framework::registry::{PluginKind, Registry};
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

const SOURCE: &str = include_str!("script_plugin.c");

/// Calls into the library that scripts it.
type ScriptFn = unsafe extern "C" fn(*const c_char, usize, u32, u32, u32);

/// The compiled plugin (`None` when no C compiler could build it) and its script setter.
struct Plugin {
    path: PathBuf,
    script: ScriptFn,
}

// The handle behind `script` stays open for the life of the process.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

/// The plugin, compiled on first use into a private directory under the temporary directory, named
/// after its source (so it is built once per machine and user, and never by two processes into
/// one file).
fn plugin() -> Option<&'static Plugin> {
    static PLUGIN: OnceLock<Option<Plugin>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            let hash = SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            // A private directory: epi-bench refuses libraries in directories every user can write.
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            let dir = std::env::temp_dir().join(format!("epi-fuzz-plugins-{uid}"));
            {
                use std::os::unix::fs::{DirBuilderExt, MetadataExt};
                let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
                let m = std::fs::metadata(&dir).ok()?;
                if m.uid() != uid || m.mode() & 0o022 != 0 {
                    return None;
                }
            }
            let path = dir.join(format!("script-plugin-{hash:016x}.so"));
            if !path.is_file() {
                compile(&dir, &path)?;
            }
            let c_path = CString::new(path.as_os_str().to_str()?).ok()?;
            // SAFETY: loading our own library (its initialisers are the C runtime's); the handle
            // is kept for the life of the process, so the symbol stays valid.
            let script = unsafe {
                let h = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW);
                if h.is_null() {
                    return None;
                }
                let sym = libc::dlsym(h, c"epi_fuzz_script".as_ptr());
                if sym.is_null() {
                    return None;
                }
                std::mem::transmute::<*mut c_void, ScriptFn>(sym)
            };
            Some(Plugin { path, script })
        })
        .as_ref()
}

fn compile(dir: &Path, path: &Path) -> Option<()> {
    let pid = std::process::id();
    let src = dir.join(format!("script-plugin-{pid}.c"));
    let tmp = dir.join(format!("script-plugin-{pid}.so.tmp"));
    std::fs::write(&src, SOURCE).ok()?;
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status();
    let _ = std::fs::remove_file(&src);
    if !status.is_ok_and(|s| s.success()) {
        let _ = std::fs::remove_file(&tmp);
        return None;
    }
    std::fs::rename(&tmp, path).ok()
}

/// Whether this machine can run the target (it needs a C compiler, `cc`).
pub fn available() -> bool {
    plugin().is_some()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"))
    })
}

/// Runs one input. Panics when the plugin cannot be built (see [`available`]).
pub fn run(data: &[u8]) {
    // One script at a time: the library's state is process-wide.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let Some((&opts, script)) = data.split_first() else {
        return;
    };
    let plugin = plugin().expect("the scripted plugin library (is `cc` installed?)");
    let (lib_abi, desc_abi, kind) = match opts {
        0xFE => (2, 1, 1),
        0xFD => (1, 7, 1),
        0xFC => (1, 1, 2),
        _ => (1, 1, 1),
    };
    // SAFETY: the setter copies `script`; nothing else calls into the library meanwhile.
    unsafe {
        (plugin.script)(
            script.as_ptr().cast(),
            script.len(),
            lib_abi,
            desc_abi,
            kind,
        )
    };
    let mut registry = Registry::builtin();
    let before = registry.keys(PluginKind::Power);
    match load_into(&mut registry, &plugin.path) {
        Ok(()) => {}
        Err(Error::Plugin { message, .. }) => {
            verbose(|| format!("refused: {message}"));
            assert!(!message.is_empty(), "a refusal without a reason");
            assert_eq!(
                registry.keys(PluginKind::Power),
                before,
                "a refused library still added a plugin"
            );
            return;
        }
        Err(e) => panic!("loading: an error of the wrong kind: {e:?}"),
    }
    let added: Vec<String> = registry
        .keys(PluginKind::Power)
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    let [key] = added.as_slice() else {
        panic!("a loaded library added {added:?}");
    };
    let mut source = match registry.power(key, &serde_json::Value::Null) {
        Ok(s) => s,
        Err(Error::Plugin { plugin: p, message }) => {
            verbose(|| format!("create: {message}"));
            assert_eq!(&p, key, "the error names another plugin");
            assert!(!message.is_empty(), "an empty error");
            return;
        }
        Err(e) => panic!("create: an error of the wrong kind: {e:?}"),
    };
    let samples = runtime().block_on(async {
        let mut samples = Vec::new();
        match source.open().await {
            Ok(info) => assert_eq!(&info.source, key, "the source is named by its key"),
            Err(e) => {
                typed(&e, key);
                return samples;
            }
        }
        loop {
            match source.next_batch().await {
                Ok(Some(batch)) => samples.extend(batch.samples),
                Ok(None) => break,
                Err(e) => {
                    typed(&e, key);
                    break;
                }
            }
        }
        let _ = source.close().await;
        samples
    });
    verbose(|| format!("{} samples", samples.len()));
    // A third-party plugin promises nothing about order: only the values are checked.
    assert_recorded_trace_reads_back(
        "dynamic plugin",
        &samples,
        Order {
            time: false,
            counter: false,
        },
    );
}

fn typed(e: &PowerError, key: &str) {
    let text = e.to_string();
    verbose(|| format!("error: {text}"));
    assert!(
        text.contains(key),
        "the error does not name the plugin: {text}"
    );
}
