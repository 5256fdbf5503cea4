//! The hardware label of a run and where it came from (`hardware_source`): the user's label,
//! the hosts the backend detected, this machine when the server is on loopback, else `unknown`.
//! Never fails: what cannot be read is `unknown`.

use epi_core::backend::BackendInfo;
use epi_core::hardware::{self, HostHardware};
use serde_json::Value;

/// The hardware label and where it came from: the user's, the hosts the backend detected
/// (`details.hosts_hardware`), this machine when the backend is local (`details.url` on
/// loopback), else `unknown`.
pub(super) fn hardware_label(
    labels: &crate::RunLabels,
    info: &BackendInfo,
) -> (String, &'static str) {
    if let Some(h) = &labels.hardware {
        return (h.clone(), "user");
    }
    if let Some(hosts) = info.details.get("hosts_hardware") {
        if let Ok(hosts) = serde_json::from_value::<Vec<HostHardware>>(hosts.clone()) {
            if !hosts.is_empty() {
                return (hardware::label(&hosts, &info.backend), "detected");
            }
        }
    }
    let local = info
        .details
        .get("url")
        .and_then(Value::as_str)
        .is_some_and(is_loopback_url);
    if local {
        return (
            hardware::label(&[HostHardware::local()], &info.server),
            "detected (this machine; the server is on loopback)",
        );
    }
    ("unknown".into(), "unknown")
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        for u in [
            "http://127.0.0.1:8080",
            "http://localhost/v1",
            "https://[::1]:8443/",
            "127.0.0.5:9",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://10.0.0.2:8080",
            "http://example.org",
            "http://127example.org",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }
}
