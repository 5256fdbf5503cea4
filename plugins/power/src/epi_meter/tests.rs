//! Tests of the epi-meter source, layer by layer: the parser, the framing, the stream state
//! machine on crafted lines, the factory, and the whole source on a real pty (socat).

use super::framing;
use super::parse::{ErrorLine, Line, LineParser, Reading};
use super::stream::MeterStream;
use super::*;
use crate::host_time::Arrival;
use epi_core::power::PowerError;
use epi_core::sample::{EnergyMethod, PowerSample};
use std::time::Duration;

fn at(ms: f64) -> Arrival {
    Arrival {
        mono_ms: ms,
        utc_ms: 1_700_000_000_000 + ms as i64,
    }
}

fn sample_line(seq: u32, t: u32, ch: &[(u32, f64, Option<f64>)]) -> String {
    let chs: Vec<String> = ch
        .iter()
        .map(|(n, w, wh)| {
            let wh = wh.map(|x| format!(",\"wh\":{x}")).unwrap_or_default();
            format!("{{\"node\":{n},\"w\":{w},\"v\":121.3,\"a\":0.1,\"pf\":0.997,\"var\":0.9{wh}}}")
        })
        .collect();
    format!(
        "{{\"type\":\"sample\",\"seq\":{seq},\"t_ms\":{t},\"ch\":[{}]}}",
        chs.join(",")
    )
}

fn feed(s: &mut MeterStream, line: &str, ms: f64) -> Vec<PowerSample> {
    let mut out = Vec::new();
    s.line(line.as_bytes(), at(ms), &mut out);
    out
}

#[test]
fn parses_the_spec_examples() {
    let p = LineParser::new(FieldNames::default());
    let hello = r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":4,"rate_hz":10,"ic":"ATM90E26"}"#;
    match p.parse(hello.as_bytes()).unwrap() {
        Line::Hello(h) => {
            assert_eq!(h.fw.as_deref(), Some("0.1.0"));
            assert_eq!(h.channels, Some(4));
            assert_eq!(h.rate_hz, Some(10.0));
        }
        other => panic!("{other:?}"),
    }
    let sample = r#"{"type":"sample","seq":1042,"t_ms":104200,"ch":[{"node":0,"w":12.45,"v":121.30,"a":0.103,"pf":0.9970,"var":0.91,"wh":3.4521},{"node":1,"w":11.89,"v":121.28,"a":0.098,"pf":0.9965,"var":0.88,"wh":3.3017}]}"#;
    match p.parse(format!("{sample}\r").as_bytes()).unwrap() {
        Line::Sample(s) => {
            assert_eq!((s.seq, s.t_ms), (1042, 104200));
            assert_eq!(s.ch[1].w, 11.89);
            assert_eq!(s.ch[0].wh, Some(3.4521));
            assert_eq!(s.ch[0].pf, Some(0.997));
        }
        other => panic!("{other:?}"),
    }
    let err =
        r#"{"type":"error","t_ms":104250,"node":2,"code":"ct_open","msg":"CT clamp not detected"}"#;
    assert!(matches!(
        p.parse(err.as_bytes()).unwrap(),
        Line::Error(ErrorLine { node: Some(2), .. })
    ));
    // Unknown types and fields are ignored.
    assert_eq!(
        p.parse(br#"{"type":"debug","x":1}"#).unwrap(),
        Line::Other("debug".into())
    );
    let extra = sample_line(1, 2, &[(0, 1.0, None)]).replace("\"seq\"", "\"temp_c\":41.5,\"seq\"");
    assert!(matches!(
        p.parse(extra.as_bytes()).unwrap(),
        Line::Sample(_)
    ));
}

#[test]
fn bad_lines_say_why_and_keep_the_seq_when_readable() {
    let p = LineParser::new(FieldNames::default());
    let cases: Vec<(String, &str, Option<u32>)> = vec![
        ("\u{1}\u{2}garbage".into(), "not a JSON object", None),
        (
            r#"{"type":"sample","seq":5,"t_ms":10,"ch":[{"node":0,"w":1"#.into(),
            "not a JSON object",
            None,
        ),
        (
            r#"{"type":"sample","seq":5,"t_ms":10,"ch":[{"node":0,"w":NaN,"v":1,"a":1,"pf":1}]}"#
                .into(),
            "not a JSON object",
            None,
        ),
        (
            sample_line(7, 10, &[(0, -3.5, None)]),
            "expected watts ≥ 0, found -3.5",
            Some(7),
        ),
        (
            sample_line(8, 10, &[(0, 3.5, None)]).replace("0.997", "1.2"),
            "power factor in [0, 1]",
            Some(8),
        ),
        (
            sample_line(9, 10, &[(0, 3.5, None)]).replace("\"w\":3.5", "\"w\":\"3.5\""),
            "field `w`: expected watts ≥ 0, found \"3.5\"",
            Some(9),
        ),
        (
            sample_line(10, 10, &[(0, 3.5, None), (0, 1.0, None)]),
            "node 0 appears twice",
            Some(10),
        ),
        (
            sample_line(11, 10, &[(0, 3.5, None)]).replace(",\"v\":121.3", ""),
            "missing field `v`",
            Some(11),
        ),
        (
            r#"{"type":"sample","seq":-1,"t_ms":10,"ch":[]}"#.into(),
            "field `seq`: expected an integer",
            None,
        ),
        (
            r#"{"type":"sample","seq":4294967296,"t_ms":10,"ch":[]}"#.into(),
            "field `seq`",
            None,
        ),
        (r#"{"seq":1}"#.into(), "missing field `type`", None),
        ("[1,2]".into(), "expected a JSON object", None),
        (
            sample_line(12, 10, &[(0, 3.5, Some(-1.0))]),
            "field `wh`",
            Some(12),
        ),
    ];
    for (line, want, seq) in cases {
        let e = p.parse(line.as_bytes()).unwrap_err();
        assert!(
            e.reason.contains(want),
            "{line}: {} (wanted {want})",
            e.reason
        );
        assert_eq!(e.seq, seq, "{line}");
    }
}

#[test]
fn a_firmware_variant_maps_by_configuration() {
    let names: FieldNames = serde_json::from_value(serde_json::json!({
        "type": "kind", "type_sample": "s", "seq": "n", "t_ms": "ms", "ch": "chan", "node": "id",
        "w": "watts", "v": "", "a": "", "pf": "cosphi", "wh": "e_wh"
    }))
    .unwrap();
    let p = LineParser::new(names);
    let line =
        br#"{"kind":"s","n":3,"ms":300,"chan":[{"id":2,"watts":7.5,"cosphi":0.5,"e_wh":1.25}]}"#;
    match p.parse(line).unwrap() {
        Line::Sample(s) => {
            assert_eq!(
                s.ch[0],
                Reading {
                    node: 2,
                    w: 7.5,
                    v: None,
                    a: None,
                    pf: Some(0.5),
                    wh: Some(1.25)
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // The default names no longer parse.
    assert!(p
        .parse(sample_line(1, 1, &[(0, 1.0, None)]).as_bytes())
        .is_err());
    let bad: Result<EpiMeterConfig, _> =
        serde_json::from_value(serde_json::json!({"port": "/dev/x", "fields": {"watt": "w"}}));
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("unknown field `watt`"));
    let empty = EpiMeterConfig {
        fields: FieldNames {
            w: String::new(),
            ..Default::default()
        },
        ..config("/dev/x")
    };
    assert!(empty.validate().unwrap_err().contains("fields.w"));
}

fn config(port: &str) -> EpiMeterConfig {
    serde_json::from_value(serde_json::json!({ "port": port })).unwrap()
}

#[test]
fn framing_joins_chunks_and_skips_over_long_lines() {
    let mut splitter = framing::splitter(200);
    let mut s = MeterStream::new(FieldNames::default());
    let mut out = Vec::new();
    let one = format!("{}\r\n", sample_line(1, 100, &[(0, 10.0, None)]));
    let two = format!("{}\n", sample_line(2, 200, &[(0, 10.0, None)]));
    let (head, tail) = one.as_bytes().split_at(20);
    let garbage = [b'x'; 150];
    for chunk in [
        head,
        tail,
        &garbage[..],
        &garbage[..],
        b"x\n",
        two.as_bytes(),
    ] {
        framing::feed(&mut splitter, &mut s, chunk, at(0.0), &mut out);
    }
    assert_eq!(out.len(), 2);
    assert_eq!((s.stats.samples, s.stats.bad_lines), (2, 1));
    assert!(
        s.events
            .iter()
            .any(|e| e.kind == "bad-line" && e.detail.contains("longer than 200 bytes")),
        "{:?}",
        s.events
    );
}

#[test]
fn partial_first_line_and_bad_lines_are_counted_not_fatal() {
    let mut s = MeterStream::new(FieldNames::default());
    s.connected();
    assert!(feed(&mut s, "0.99,\"var\":0.9}]}", 0.0).is_empty());
    assert_eq!(s.events[0].kind, "partial-line");
    assert_eq!(
        feed(&mut s, &sample_line(1, 100, &[(0, 10.0, None)]), 10.0).len(),
        1
    );
    assert!(feed(&mut s, "%%garbage%%", 20.0).is_empty());
    assert_eq!(
        feed(&mut s, &sample_line(2, 200, &[(0, 10.0, None)]), 110.0).len(),
        1
    );
    // A bad sample whose seq is readable is not a lost sample.
    assert!(feed(&mut s, &sample_line(3, 300, &[(0, -1.0, None)]), 210.0).is_empty());
    assert_eq!(
        feed(&mut s, &sample_line(4, 400, &[(0, 10.0, None)]), 310.0).len(),
        1
    );
    assert_eq!(s.stats.bad_lines, 3);
    assert_eq!(s.stats.lost_samples, 0);
    assert_eq!(s.stats.samples, 3);
}

#[test]
fn seq_gaps_count_lost_samples_across_the_u32_wrap() {
    let mut s = MeterStream::new(FieldNames::default());
    let max = u32::MAX;
    feed(&mut s, &sample_line(max - 1, 1000, &[(0, 1.0, None)]), 0.0);
    feed(&mut s, &sample_line(max, 1100, &[(0, 1.0, None)]), 100.0);
    feed(&mut s, &sample_line(0, 1200, &[(0, 1.0, None)]), 200.0);
    assert_eq!(s.stats.lost_samples, 0);
    feed(&mut s, &sample_line(4, 1600, &[(0, 1.0, None)]), 600.0);
    assert_eq!(s.stats.lost_samples, 3);
    assert_eq!(s.stats.reboots, 0);
    assert!(s
        .events
        .iter()
        .any(|e| e.kind == "lost-samples" && e.detail.contains("3 sample(s)")));
    // Duplicates are bad lines, not reboots.
    feed(&mut s, &sample_line(4, 1600, &[(0, 1.0, None)]), 610.0);
    assert_eq!((s.stats.bad_lines, s.stats.reboots), (1, 0));
}

#[test]
fn t_ms_wrap_keeps_the_timeline_continuous_on_the_meter_clock() {
    let mut s = MeterStream::new(FieldNames::default());
    let t0 = u32::MAX - 150;
    let a = feed(&mut s, &sample_line(1, t0, &[(0, 1.0, None)]), 5000.4);
    let b = feed(
        &mut s,
        &sample_line(2, t0.wrapping_add(100), &[(0, 1.0, None)]),
        5103.0,
    );
    let c = feed(
        &mut s,
        &sample_line(3, t0.wrapping_add(200), &[(0, 1.0, None)]),
        5199.0,
    );
    assert_eq!(a[0].t_ms, 5000.0); // anchored at the host arrival, whole ms
    assert_eq!(b[0].t_ms, 5100.0); // then the meter's clock, not the host's
    assert_eq!(c[0].t_ms, 5200.0);
    assert_eq!(c[0].source_t_ms, Some(49.0));
    assert_eq!(c[0].host_mono_ms, 5199.0);
    assert_eq!(s.stats.reboots, 0);
}

#[test]
fn reboot_continues_the_timeline_in_host_time_and_bridges_the_counter() {
    let mut s = MeterStream::new(FieldNames::default());
    feed(
        &mut s,
        r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":1,"rate_hz":10,"ic":"ATM90E26"}"#,
        0.0,
    );
    let a = feed(
        &mut s,
        &sample_line(500, 50_000, &[(0, 10.0, Some(1.0))]),
        1000.0,
    );
    let b = feed(
        &mut s,
        &sample_line(501, 50_100, &[(0, 20.0, Some(1.001))]),
        1100.0,
    );
    assert_eq!(a[0].energy_j, Some(3600.0));
    assert!((b[0].energy_j.unwrap() - 3603.6).abs() < 1e-9);
    feed(
        &mut s,
        r#"{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":1,"rate_hz":10,"ic":"ATM90E26"}"#,
        1700.0,
    );
    // Rebooted: seq and t_ms restart. Host gap 1100 → 1800 ms.
    let c = feed(
        &mut s,
        &sample_line(0, 300, &[(0, 30.0, Some(0.0005))]),
        1800.2,
    );
    let d = feed(
        &mut s,
        &sample_line(1, 400, &[(0, 30.0, Some(0.0015))]),
        1901.0,
    );
    assert_eq!(s.stats.reboots, 1);
    assert_eq!(s.stats.lost_samples, 0);
    assert_eq!(c[0].t_ms, b[0].t_ms + 700.0);
    assert_eq!(d[0].t_ms, c[0].t_ms + 100.0);
    // Counter: bridged by the trapezoid (20 + 30)/2 W × 0.7 s = 17.5 J, then the new boot's Wh.
    let bridged = b[0].energy_j.unwrap() + 17.5;
    assert!((c[0].energy_j.unwrap() - bridged).abs() < 1e-9);
    assert!((d[0].energy_j.unwrap() - (bridged + 0.001 * 3600.0)).abs() < 1e-9);
    let ev = s.events.iter().find(|e| e.kind == "reboot").unwrap();
    assert!(
        ev.detail.contains("new hello") && ev.detail.contains("700 ms"),
        "{}",
        ev.detail
    );
}

#[test]
fn reboot_gap_is_at_least_the_meters_uptime() {
    // Both lines read in one chunk (same arrival): the gap is the new boot's uptime.
    let mut s = MeterStream::new(FieldNames::default());
    let a = feed(&mut s, &sample_line(9, 90_000, &[(0, 1.0, None)]), 100.0);
    let b = feed(&mut s, &sample_line(0, 250, &[(0, 1.0, None)]), 100.0);
    assert_eq!(b[0].t_ms - a[0].t_ms, 250.0);
    assert_eq!(s.stats.reboots, 1);
}

#[test]
fn a_long_uptime_reboot_is_detected_by_the_clock_lead() {
    // After 30 days, t_ms going back to 300 looks like a step forward modulo 2^32, and seq may
    // have wrapped to a similar value; the meter clock would lead the host by 19 days.
    let mut s = MeterStream::new(FieldNames::default());
    let t_old = 30 * 86_400_000u32;
    feed(&mut s, &sample_line(10, t_old, &[(0, 1.0, None)]), 0.0);
    feed(&mut s, &sample_line(11, 300, &[(0, 1.0, None)]), 1000.0);
    assert_eq!(s.stats.reboots, 1);
}

#[test]
fn counter_reset_without_reboot_is_bridged() {
    let mut s = MeterStream::new(FieldNames::default());
    let a = feed(&mut s, &sample_line(1, 100, &[(0, 10.0, Some(5.0))]), 0.0);
    let b = feed(&mut s, &sample_line(2, 200, &[(0, 10.0, Some(0.0))]), 100.0);
    assert!((b[0].energy_j.unwrap() - (a[0].energy_j.unwrap() + 1.0)).abs() < 1e-9);
    assert!(s.events.iter().any(|e| e.kind == "counter-reset"));
}

#[test]
fn factory_validates_without_io() {
    let r = Registry::builtin();
    assert!(r
        .power(KEY, &serde_json::json!({"port": "/dev/does-not-exist"}))
        .is_ok());
    let e = r
        .power(KEY, &serde_json::json!({"port": "/dev/x", "baud": 0}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("baud"), "{e}");
    let e = r
        .power(KEY, &serde_json::json!({"port": "/dev/x", "bogus": 1}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = r
        .power(KEY, &serde_json::json!({}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing field `port`"), "{e}");
}

use epi_core::Registry;

#[tokio::test]
async fn a_missing_port_is_not_available_with_a_hint() {
    let mut m = EpiMeter::new(config("/dev/epi-meter-test-does-not-exist")).unwrap();
    let e = m.open().await.unwrap_err();
    assert!(matches!(e, PowerError::NotAvailable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("does not exist: is the meter plugged in?"),
        "{e}"
    );
}

/// Whether socat is installed (fails under `EPI_REQUIRE_SYSTEM_TOOLS`).
fn have_socat() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("socat").is_file()))
        .unwrap_or(false);
    if !found && std::env::var_os("EPI_REQUIRE_SYSTEM_TOOLS").is_some() {
        panic!(
            "socat is required (EPI_REQUIRE_SYSTEM_TOOLS is set) but not installed: run .ci/setup"
        );
    }
    if !found {
        eprintln!("skipping: socat not installed (run .ci/setup)");
    }
    found
}

struct Socat(std::process::Child);
impl Drop for Socat {
    fn drop(&mut self) {
        // SIGTERM, so socat removes its links as an unplugged device node disappears.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn socat(dir: &std::path::Path) -> Socat {
    let child = std::process::Command::new("socat")
        .arg(format!(
            "pty,raw,echo=0,link={}",
            dir.join("meter").display()
        ))
        .arg(format!(
            "pty,raw,echo=0,link={},wait-slave,pty-interval=0.02",
            dir.join("host").display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn socat");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(dir.join("meter").exists() && dir.join("host").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "socat made no pty pair in 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Socat(child)
}

#[tokio::test]
async fn reads_a_real_pty_and_survives_the_port_vanishing() {
    if !have_socat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("host");
    let mut cfg = config(link.to_str().unwrap());
    cfg.open_timeout_ms = 60_000; // a bound on a hang: the writer starts after 300 ms
    cfg.reconnect_initial_ms = 20;
    cfg.reconnect_max_ms = 100;
    let guard = socat(dir.path());
    let meter_path = dir.path().join("meter");
    let writer = std::thread::spawn({
        let meter_path = meter_path.clone();
        move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&meter_path)
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            f.write_all(b"ial\":0.9}]}\n").unwrap();
            for i in 0..5u32 {
                f.write_all(
                    format!(
                        "{}\n",
                        sample_line(i, i * 100, &[(0, 5.0, Some(0.01)), (1, 6.0, None)])
                    )
                    .as_bytes(),
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let mut m = EpiMeter::new(cfg).unwrap();
    let info = m.open().await.unwrap();
    assert_eq!(info.method, EnergyMethod::Integrated); // node 1 sends no wh
    assert_eq!(
        info.channels.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    writer.join().unwrap();
    let mut samples = Vec::new();
    while samples.len() < 10 {
        let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        samples.extend(b.samples);
    }
    assert_eq!(m.stats().bad_lines, 1); // the partial first line
                                        // Unplug: socat goes away (the link with it), then comes back on the same path.
    drop(guard);
    let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b.events[0].kind, "disconnected");
    let _guard = socat(dir.path());
    let w = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&meter_path)
            .unwrap();
        let _ = f.write_all(b"{\"type\":\"hello\",\"fw\":\"0.2.0\",\"board\":\"epi-meter v1.0\",\"channels\":2,\"rate_hz\":50,\"ic\":\"ATM90E26\"}\n");
        for i in 7..40u32 {
            if f.write_all(
                format!(
                    "{}\n",
                    sample_line(i, i * 100, &[(0, 5.0, None), (1, 6.0, None)])
                )
                .as_bytes(),
            )
            .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut events = Vec::new();
    let mut after = Vec::new();
    while after.is_empty() {
        let b = tokio::time::timeout(Duration::from_secs(60), m.next_batch())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.extend(b.events);
        after.extend(b.samples);
    }
    assert!(events.iter().any(|e| e.kind == "reconnected"), "{events:?}");
    let st = m.stats();
    assert_eq!(st.reconnects, 1);
    assert!(st.disconnected_ms > 0.0);
    // The meter kept counting while unplugged: the seq gap is lost samples, and the timeline
    // follows the meter's clock across the gap.
    let first_after = after[0];
    let seq_after = first_after.source_t_ms.unwrap() as u32 / 100;
    assert_eq!(st.lost_samples, (seq_after - 5) as u64);
    assert_eq!(
        first_after.t_ms - samples[0].t_ms,
        first_after.source_t_ms.unwrap()
    );
    // The hello that came after open updates the provenance.
    let info = m.current_info().expect("a hello arrived after open");
    assert_eq!(info.instrument, "epi-meter v1.0 fw 0.2.0, ATM90E26");
    assert_eq!(info.sample_rate_hz, Some(50.0));
    m.close().await.unwrap();
    w.join().unwrap();
}
