//! Tests of the SSH client against a real OpenSSH `sshd` on 127.0.0.1.

use super::*;
use crate::clock::utc_ns_now;
use crate::testing::{generate_key, require_tool, KeyType, Sshd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTILE: &[&str] = &[
    "",
    " ",
    "two words",
    "it's",
    "'",
    "''",
    "\"double\"",
    "$(touch /tmp/epi-ssh-pwned)",
    "`touch /tmp/epi-ssh-pwned`",
    "${HOME}",
    "$HOME",
    "a;touch /tmp/epi-ssh-pwned",
    "a && b || c",
    "line1\nline2",
    "\ttab",
    "back\\slash\\",
    "*",
    "~",
    "~root",
    "-n",
    "--",
    "a=b",
    "!x",
    "#comment",
    "a|b>c<d",
    "(sub)",
    "{a,b}",
    "\u{e9}t\u{e9} \u{1F600}",
    "%s%n",
    "\r\n",
];

fn sshd_or_skip() -> Option<Sshd> {
    if !require_tool("sshd") || !require_tool("ssh-keygen") {
        return None;
    }
    Some(Sshd::start().expect("start sshd"))
}

#[test]
fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
    assert_eq!(shell_quote("abc-1.2/x:y@z%+,_"), "abc-1.2/x:y@z%+,_");
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(shell_quote("a=b"), "'a=b'");
    assert_eq!(shell_quote("~"), "'~'");
    assert!(command_line::<&str>(&[]).is_err());
    assert!(command_line(&["a\0b"])
        .unwrap_err()
        .to_string()
        .contains("NUL"));
}

#[test]
fn hostile_arguments_survive_a_local_posix_shell_unchanged() {
    // `printf '%s\0'` prints each argument it receives, NUL-terminated: the shell must hand
    // every hostile string over as exactly one argument, byte for byte.
    for shell in ["/bin/sh", "/bin/bash"] {
        if !Path::new(shell).exists() {
            continue;
        }
        let mut argv = vec!["printf", "%s\\0"];
        argv.extend_from_slice(HOSTILE);
        let line = command_line(&argv).unwrap();
        let out = Command::new(shell).arg("-c").arg(&line).output().unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        assert_eq!(got.len(), HOSTILE.len() + 1, "{shell}");
        for (want, got) in HOSTILE.iter().zip(got) {
            assert_eq!(got, want.as_bytes(), "{shell}: {want:?}");
        }
    }
    assert!(!Path::new("/tmp/epi-ssh-pwned").exists());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn runs_commands_with_hostile_arguments_and_collects_output_and_status() {
    let Some(sshd) = sshd_or_skip() else { return };
    rt().block_on(async {
        let ssh = SshSession::connect(&sshd.options())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        assert_eq!(
            ssh.host_key().fingerprint,
            sshd.host_key_fingerprint().unwrap()
        );
        assert!(!ssh.host_key().newly_recorded);

        let mut argv = vec!["printf", "%s\\0"];
        argv.extend_from_slice(HOSTILE);
        let out = ssh
            .run_checked(&argv, Duration::from_secs(20))
            .await
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        assert_eq!(got.len(), HOSTILE.len() + 1);
        for (want, got) in HOSTILE.iter().zip(got) {
            assert_eq!(got, want.as_bytes(), "{want:?}");
        }
        assert!(!Path::new("/tmp/epi-ssh-pwned").exists());

        let out = ssh
            .run(
                &["sh", "-c", "echo out; echo err >&2; exit 7"],
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_text(), "err\n");
        assert_eq!(out.status, RemoteExit::Code(7));
        let e = ssh
            .run_checked(
                &["sh", "-c", "echo boom >&2; exit 3"],
                Duration::from_secs(20),
            )
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("exit status 3") && msg.contains("boom"),
            "{msg}"
        );

        let missing = ssh
            .run(&["/nonexistent/tool", "x"], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(
            missing.status,
            RemoteExit::Code(127),
            "{:?}",
            missing.stderr_text()
        );
        ssh.close().await;
    });
}

fn remote_pids(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn wait_gone(pattern: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if remote_pids(pattern).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn a_timed_out_command_is_killed_on_the_remote() {
    let Some(sshd) = sshd_or_skip() else { return };
    if !require_tool("pgrep") {
        return;
    }
    rt().block_on(async {
        let ssh = SshSession::connect(&sshd.options()).await.unwrap();
        let marker = format!("sleep 3{}", std::process::id() % 1000 + 1000);
        let secs = marker.trim_start_matches("sleep ").to_string();
        let e = ssh
            .run(&["sleep", &secs], Duration::from_millis(700))
            .await
            .unwrap_err();
        assert!(matches!(e, SshError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(
            wait_gone(&format!("^{marker}$"), Duration::from_secs(60)).await,
            "`{marker}` still runs"
        );
    });
}

#[test]
fn spawned_processes_stream_lines_and_stop_by_signal_close_drop_and_stop_all() {
    let Some(sshd) = sshd_or_skip() else { return };
    if !require_tool("pgrep") {
        return;
    }
    rt().block_on(async {
        let ssh = SshSession::connect(&sshd.options()).await.unwrap();
        let tag = std::process::id();

        // Lines stream back while the process runs; stop() ends it with TERM.
        let script = format!("i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done # epi-test-a-{tag}");
        let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
        assert!(p.pid().is_some());
        for i in 0..5 {
            assert_eq!(p.next_line().await.as_deref(), Some(format!("line {i}").as_str()));
        }
        let status = p.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, RemoteExit::Code(128 + 15), "{status}");
        assert!(wait_gone(&format!("epi-test-a-{tag}"), Duration::from_secs(60)).await);

        // A process ignoring TERM is killed after the grace period; its children too.
        let script = format!("trap '' TERM; sleep 1000 & echo ready; wait # epi-test-b-{tag}");
        let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
        assert_eq!(p.next_line().await.as_deref(), Some("ready"));
        let t = Instant::now();
        let status = p.stop(Duration::from_millis(500)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(500));
        assert_eq!(status, RemoteExit::Code(128 + 9), "{status}");
        assert!(wait_gone(&format!("epi-test-b-{tag}"), Duration::from_secs(60)).await);

        // Signals reach the process.
        let script = format!("trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.05; done # epi-test-c-{tag}");
        let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
        assert_eq!(p.next_line().await.as_deref(), Some("ready"));
        p.signal(Signal::Usr1).await.unwrap();
        assert_eq!(p.next_line().await.as_deref(), Some("got-usr1"));
        p.signal(Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await, RemoteExit::Code(128 + 9));

        // Closing the channel stops it (the supervisor watches the channel).
        let script = format!("echo ready; exec sleep 1000 # epi-test-d-{tag}");
        let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
        assert_eq!(p.next_line().await.as_deref(), Some("ready"));
        p.close().await;
        assert!(wait_gone(&format!("epi-test-d-{tag}"), Duration::from_secs(60)).await);

        // Dropping a running process stops it.
        let script = format!("echo ready; sleep 1000 # epi-test-e-{tag}");
        let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
        assert_eq!(p.next_line().await.as_deref(), Some("ready"));
        drop(p);
        assert!(wait_gone(&format!("epi-test-e-{tag}"), Duration::from_secs(60)).await);

        // Everything stopped above has been reported as ended.
        let deadline = Instant::now() + Duration::from_secs(60);
        while ssh.running() > 0 {
            let live: Vec<String> = ssh.inner.live.lock().unwrap().values().map(|p| p.command.clone()).collect();
            assert!(Instant::now() < deadline, "{live:?} still listed as running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // stop_all stops everything still running (the Ctrl-C path).
        let mut ps = Vec::new();
        for k in 0..3 {
            let script = format!("echo ready; sleep 1000 # epi-test-f{k}-{tag}");
            let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
            assert_eq!(p.next_line().await.as_deref(), Some("ready"));
            ps.push(p);
        }
        assert_eq!(ssh.running(), 3);
        assert_eq!(ssh.stop_all(Duration::from_secs(3)).await, 3);
        assert!(wait_gone(&format!("epi-test-f.-{tag}"), Duration::from_secs(60)).await);
        for mut p in ps {
            assert!(matches!(p.wait().await, RemoteExit::Code(c) if c == 128 + 15));
        }

        // Standard error is kept; a process that ends by itself reports its status.
        let mut p = ssh.spawn(&["sh", "-c", "echo e1 >&2; echo o1; printf partial; exit 4"]).await.unwrap();
        let mut events = Vec::new();
        while let Some(ev) = p.next_event().await {
            events.push(ev);
        }
        assert!(events.contains(&ProcessEvent::Stdout("o1".into())), "{events:?}");
        assert!(events.contains(&ProcessEvent::Stdout("partial".into())), "{events:?}");
        assert!(events.contains(&ProcessEvent::Stderr("e1".into())), "{events:?}");
        assert_eq!(events.last(), Some(&ProcessEvent::Exited(RemoteExit::Code(4))));
        assert_eq!(p.stderr_tail(), vec!["e1".to_string()]);
        assert_eq!(ssh.stop_all(Duration::from_secs(1)).await, 0);
    });
}

#[test]
fn losing_the_connection_stops_remote_processes() {
    let Some(sshd) = sshd_or_skip() else { return };
    if !require_tool("pgrep") {
        return;
    }
    let tag = std::process::id();
    let pattern = format!("epi-test-g-{tag}");
    {
        let rt = rt();
        rt.block_on(async {
            let ssh = SshSession::connect(&sshd.options()).await.unwrap();
            let script = format!("echo ready; sleep 1000 # {pattern}");
            let mut p = ssh.spawn(&["sh", "-c", &script]).await.unwrap();
            assert_eq!(p.next_line().await.as_deref(), Some("ready"));
            std::mem::forget(p); // no Drop: only the connection's end can stop it
        });
        // Dropping the runtime drops the connection without any goodbye.
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remote_pids(&pattern).is_empty() {
        assert!(
            Instant::now() < deadline,
            "`{pattern}` survived the connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clock_offset_of_the_same_machine_is_within_its_uncertainty() {
    let Some(sshd) = sshd_or_skip() else { return };
    rt().block_on(async {
        let ssh = SshSession::connect(&sshd.options()).await.unwrap();
        let c = ssh.clock_offset(8).await.unwrap();
        assert_eq!(c.probes, 8);
        assert!(
            c.round_trip_ms > 0.0 && c.round_trip_ms.is_finite(),
            "{c:?}"
        );
        assert_eq!(c.uncertainty_ms, c.round_trip_ms / 2.0);
        // The same clock on both ends: the true offset is 0, which must lie within the bound.
        assert!(c.offset_ms.abs() <= c.uncertainty_ms + 0.001, "{c:?}");
        let now = utc_ns_now() / 1_000_000;
        assert!((now as i64 - c.measured_utc_ms).abs() < 10_000);
    });
}

#[test]
fn unknown_host_key_is_refused_naming_host_type_and_fingerprint_unless_accepted() {
    let Some(sshd) = sshd_or_skip() else { return };
    rt().block_on(async {
        let fingerprint = sshd.host_key_fingerprint().unwrap();
        let empty = sshd.dir().join("empty_known_hosts");
        let opts = sshd.options().known_hosts(&empty);
        let e = SshSession::connect(&opts).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SshError::HostKeyUnknown { .. }), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{}", sshd.port())), "{msg}");
        assert!(
            msg.contains("ssh-ed25519") && msg.contains(&fingerprint),
            "{msg}"
        );
        assert!(!empty.exists(), "a refused key must not be recorded");

        // Accepting records it; the next connection finds it without the option.
        let s = SshSession::connect(&opts.clone().accept_new_host_key(true))
            .await
            .unwrap();
        assert!(s.host_key().newly_recorded);
        let text = std::fs::read_to_string(&empty).unwrap();
        assert_eq!(
            text,
            format!(
                "[127.0.0.1]:{} {}\n",
                sshd.port(),
                sshd.host_public_key().unwrap()
            )
        );
        let s2 = SshSession::connect(&opts).await.unwrap();
        assert!(!s2.host_key().newly_recorded);
        // The other port of the same host is a different entry.
        let other = SshSession::connect(&opts.clone().port(1))
            .await
            .unwrap_err();
        assert!(
            matches!(other, SshError::Connect { .. } | SshError::Timeout { .. }),
            "{other}"
        );
    });
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let Some(mut sshd) = sshd_or_skip() else {
        return;
    };
    rt().block_on(async {
        let old = sshd.host_key_fingerprint().unwrap();
        sshd.restart_with_new_host_key(KeyType::Ed25519).unwrap();
        let new = sshd.host_key_fingerprint().unwrap();
        assert_ne!(old, new);
        let before = std::fs::read_to_string(sshd.known_hosts()).unwrap();
        for accept in [false, true] {
            let e = SshSession::connect(&sshd.options().accept_new_host_key(accept))
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, SshError::HostKeyChanged(_)), "{msg}");
            assert!(
                msg.contains("CHANGED") && msg.contains(&new) && msg.contains(&old),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{}:1", sshd.known_hosts().display())),
                "{msg}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(sshd.known_hosts()).unwrap(),
            before,
            "known_hosts must be untouched"
        );

        // A host known only with another key type is refused as changed, too.
        sshd.restart_with_new_host_key(KeyType::Rsa).unwrap();
        let e = SshSession::connect(&sshd.options().accept_new_host_key(true))
            .await
            .unwrap_err();
        assert!(matches!(e, SshError::HostKeyChanged(_)), "{e}");
        assert!(e.to_string().contains("ssh-rsa"), "{e}");
    });
}

#[test]
fn hashed_known_hosts_entries_are_honoured() {
    let Some(sshd) = sshd_or_skip() else { return };
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(sshd.known_hosts())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(sshd.known_hosts()).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    rt().block_on(async {
        SshSession::connect(&sshd.options()).await.unwrap();
    });
}

#[test]
fn wrong_user_key_is_refused_and_rsa_keys_work() {
    let Some(sshd) = sshd_or_skip() else { return };
    rt().block_on(async {
        let wrong = sshd.dir().join("wrong_key");
        generate_key(&wrong, KeyType::Ed25519).unwrap();
        let e = SshSession::connect(&sshd.options().identity(&wrong))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SshError::Auth { .. }), "{msg}");
        assert!(
            msg.contains("wrong_key") && msg.contains("SHA256:"),
            "{msg}"
        );

        let missing = SshSession::connect(&sshd.options().identity(sshd.dir().join("nope")))
            .await
            .unwrap_err();
        assert!(matches!(missing, SshError::Key { .. }), "{missing}");

        let encrypted = sshd.dir().join("encrypted_key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
            .arg(&encrypted)
            .status()
            .unwrap();
        assert!(st.success());
        let e = SshSession::connect(&sshd.options().identity(&encrypted))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("passphrase"), "{e}");
    });
    // An RSA user key and an RSA host key.
    let sshd = Sshd::start_with(KeyType::Rsa, KeyType::Rsa).unwrap();
    rt().block_on(async {
        let ssh = SshSession::connect(&sshd.options())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        assert_eq!(ssh.host_key().key_type, "ssh-rsa");
        let out = ssh
            .run_checked(&["echo", "rsa ok"], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "rsa ok\n");
    });
}

#[test]
fn agent_keys_authenticate() {
    let Some(sshd) = sshd_or_skip() else { return };
    if !require_tool("ssh-agent") || !require_tool("ssh-add") {
        return;
    }
    let sock = sshd.dir().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "ssh-agent did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let add = Command::new("ssh-add")
        .arg(sshd.user_key())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    rt().block_on(async {
        let mut opts = sshd.options().agent_socket(&sock);
        opts.identity = None;
        let ssh = SshSession::connect(&opts)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let out = ssh
            .run_checked(&["echo", "agent ok"], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "agent ok\n");
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
