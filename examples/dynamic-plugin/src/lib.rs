//! A third-party epi-bench power source as a dynamic library: a Linux **hwmon** power sensor.
//!
//! Many boards expose their power monitor through hwmon (`/sys/class/hwmon/hwmon*/power1_input`,
//! microwatts; INA2xx/INA3221 rails, some PMICs and server PSUs). This plugin polls one such file and
//! streams it as a channel, speaking epi-bench's dynamic plugin ABI v1 (see
//! `epi_framework::dynamic`): it exports the data symbols `epi_plugin_abi_version` and
//! `epi_plugin_v1`, and exchanges JSON strings. It depends on nothing from epi-bench.
//!
//! ```text
//! cargo build --release -p epi-example-dynamic-plugin
//! epi --plugin target/release/libepi_example_dynamic_plugin.so list plugins --kind power
//! ```
//! Configuration (`[power.hwmon]` in epi-bench.toml, or JSON):
//! `path` (required; a `power*_input`/`power*_average` file in µW), `interval_ms` (default 100),
//! `name` (channel name).
#![deny(missing_docs)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The descriptor layout of ABI v1 (must match `epi_framework::dynamic::EpiPluginV1`).
#[repr(C)]
pub struct EpiPluginV1 {
    abi_version: u32,
    kind: u32,
    key: *const c_char,
    description: *const c_char,
    create: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> *mut c_void,
    open: unsafe extern "C" fn(*mut c_void, *mut *mut c_char) -> *mut c_char,
    next_batch: unsafe extern "C" fn(*mut c_void, u32, *mut *mut c_char) -> *mut c_char,
    close: unsafe extern "C" fn(*mut c_void),
    free_string: unsafe extern "C" fn(*mut c_char),
}

// Immutable static data.
unsafe impl Sync for EpiPluginV1 {}

/// The ABI version this plugin was built for (read by epi-bench before anything is called).
#[no_mangle]
pub static epi_plugin_abi_version: u32 = 1;

/// The plugin's descriptor.
#[no_mangle]
pub static epi_plugin_v1: EpiPluginV1 = EpiPluginV1 {
    abi_version: 1,
    kind: 1,
    key: c"hwmon".as_ptr(),
    description: c"Linux hwmon power sensor (power*_input, µW), polled [dynamic plugin example]"
        .as_ptr(),
    create,
    open,
    next_batch,
    close,
    free_string,
};

struct Sensor {
    path: String,
    interval: Duration,
    name: String,
    start: Option<Instant>,
    next_due: Option<Instant>,
}

fn cstring(s: String) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .unwrap_or_default()
        .into_raw()
}

unsafe fn set_err(err: *mut *mut c_char, msg: String) {
    if !err.is_null() {
        *err = cstring(msg);
    }
}

unsafe extern "C" fn create(config_json: *const c_char, err: *mut *mut c_char) -> *mut c_void {
    let text = if config_json.is_null() {
        "null".into()
    } else {
        CStr::from_ptr(config_json).to_string_lossy().into_owned()
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            set_err(err, format!("configuration is not JSON: {e}"));
            return std::ptr::null_mut();
        }
    };
    if let Some(obj) = v.as_object() {
        for k in obj.keys() {
            if !["path", "interval_ms", "name"].contains(&k.as_str()) {
                set_err(
                    err,
                    format!("unknown configuration key `{k}`; expected path, interval_ms, name"),
                );
                return std::ptr::null_mut();
            }
        }
    }
    let Some(path) = v.get("path").and_then(|p| p.as_str()) else {
        set_err(
            err,
            "configuration key `path` (a hwmon power*_input file, µW) is required".into(),
        );
        return std::ptr::null_mut();
    };
    let interval_ms = v
        .get("interval_ms")
        .and_then(|x| x.as_u64())
        .unwrap_or(100)
        .max(1);
    let name = v
        .get("name")
        .and_then(|x| x.as_str())
        .unwrap_or(path)
        .to_string();
    Box::into_raw(Box::new(Sensor {
        path: path.to_string(),
        interval: Duration::from_millis(interval_ms),
        name,
        start: None,
        next_due: None,
    })) as *mut c_void
}

fn read_watts(path: &str) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let uw: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{path}: expected microwatts, found {:?}", text.trim()))?;
    if !(uw.is_finite() && uw >= 0.0) {
        return Err(format!("{path}: {uw} µW is not a power reading"));
    }
    Ok(uw / 1e6)
}

unsafe extern "C" fn open(inst: *mut c_void, err: *mut *mut c_char) -> *mut c_char {
    let s = &mut *(inst as *mut Sensor);
    if let Err(e) = read_watts(&s.path) {
        set_err(err, format!("not available: {e}"));
        return std::ptr::null_mut();
    }
    s.start = Some(Instant::now());
    s.next_due = s.start;
    let info = serde_json::json!({
        "source": "hwmon",
        "method": "integrated",
        "instrument": format!("hwmon sensor {}", s.path),
        "sample_rate_hz": 1000.0 / s.interval.as_millis() as f64,
        "accuracy_rel": null,
        "channels": [{"id": 0, "name": s.name, "scope": "board"}],
        "replay": false,
        "details": {"path": s.path},
    });
    cstring(info.to_string())
}

unsafe extern "C" fn next_batch(
    inst: *mut c_void,
    timeout_ms: u32,
    err: *mut *mut c_char,
) -> *mut c_char {
    let s = &mut *(inst as *mut Sensor);
    let (Some(start), Some(due)) = (s.start, s.next_due) else {
        set_err(err, "next_batch before open".into());
        return std::ptr::null_mut();
    };
    let now = Instant::now();
    if due > now {
        let wait = (due - now).min(Duration::from_millis(timeout_ms as u64));
        std::thread::sleep(wait);
        if Instant::now() < due {
            return cstring(r#"{"samples":[],"events":[]}"#.into());
        }
    }
    s.next_due = Some(due + s.interval);
    let watts = match read_watts(&s.path) {
        Ok(w) => w,
        Err(e) => {
            set_err(err, e);
            return std::ptr::null_mut();
        }
    };
    let mono = start.elapsed().as_secs_f64() * 1000.0;
    let utc = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let batch = serde_json::json!({
        "samples": [{
            "channel": 0, "t_ms": mono, "host_mono_ms": mono, "host_utc_ms": utc,
            "source_t_ms": null, "watts": watts, "volts": null, "amps": null,
            "power_factor": null, "energy_j": null
        }],
        "events": []
    });
    cstring(batch.to_string())
}

unsafe extern "C" fn close(inst: *mut c_void) {
    if !inst.is_null() {
        drop(Box::from_raw(inst as *mut Sensor));
    }
}

unsafe extern "C" fn free_string(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
