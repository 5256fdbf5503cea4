//! Servers: [`Double`] (the replaying llama-server double, frozen with SIGSTOP to hang it) and
//! [`FaultProxy`] (an HTTP proxy in front of it that injects a [`Fault`] into the requests after
//! the run's first record). A server that does not come up fails the test, naming it.

use super::lock;
use super::processes::signal_pid;
use crate::support::{complete_lines, doubles, repo_root, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The replaying llama-server double (`plugins/backends/tests/doubles/llama_server.py`) on a
/// loopback port. `freeze` (SIGSTOP) hangs it the way a deadlocked server hangs: the kernel still
/// accepts connections, nothing answers. Killed on drop.
pub(crate) struct Double {
    child: Child,
    pub(crate) port: u16,
}

impl Double {
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Double {
        let mut child = Command::new("python3")
            .arg(doubles().join("llama_server.py"))
            .args(["--port", "0", "--log"])
            .arg(dir.join("llama-requests.jsonl"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the llama-server double");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the double says where it listens");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the double printed `{line}`"));
        Double { child, port }
    }

    pub(crate) fn freeze(&self) {
        signal_pid(self.child.id(), libc::SIGSTOP);
    }

    pub(crate) fn thaw(&self) {
        signal_pid(self.child.id(), libc::SIGCONT);
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`FaultProxy`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    /// Forwards the request to the double and its reply back.
    Pass,
    /// Holds the request until [`FaultProxy::release`], then forwards it: the run waits,
    /// mid-query, while the test injects another fault.
    Hold,
    /// Answers llama-server's recorded HTTP 500 (`completion_context_exceeded.http`, byte for
    /// byte: `{"error":{"code":500,"message":"Context size has been exceeded.",...}}`).
    Http500,
    /// Forwards the request, then sends the reply's head and the first half of its body and
    /// closes the connection: a server that crashes, or a network cut, mid-reply.
    CutReply,
}

#[derive(Default)]
pub(crate) struct ProxyState {
    /// The fault, and the records file whose first record arms it.
    armed: Option<(Fault, PathBuf)>,
    released: bool,
    held: usize,
    faulted: usize,
    forwarded: usize,
}

/// An HTTP proxy in front of the llama-server double that injects a [`Fault`] into every request
/// that arrives once the run's first record is on disk (`arm`): the requests of the items after
/// the first, whatever the speed of the machine (with one query at a time, the next item starts
/// after the record of the last is written). Requests and replies pass byte for byte, except
/// that each exchange gets its own connection (`Connection: close` both ways), so the fault
/// reaches the next request whatever connection pooling the client does.
pub(crate) struct FaultProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

/// `head` (a request or reply head, up to the blank line) without its `Connection` and
/// `Keep-Alive` headers and with `Connection: close`.
pub(crate) fn closing_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name != "connection" && name != "keep-alive" {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request from `conn` (head, body), or none when the client closed.
pub(crate) fn read_http_request(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = buf[..end + 4].to_vec();
    let length = String::from_utf8_lossy(&head)
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, body))
}

impl FaultProxy {
    pub(crate) fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let recorded_500 =
            std::fs::read(repo_root().join(
                "plugins/backends/tests/fixtures/llama-server/completion_context_exceeded.http",
            ))
            .expect("the recorded HTTP 500");
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (st, r500) = (st.clone(), recorded_500.clone());
                std::thread::spawn(move || FaultProxy::exchange(conn, upstream, &st, &r500));
            }
        });
        FaultProxy { port, state }
    }

    pub(crate) fn exchange(
        mut conn: TcpStream,
        upstream: u16,
        st: &Mutex<ProxyState>,
        r500: &[u8],
    ) {
        let Some((head, body)) = read_http_request(&mut conn) else {
            return;
        };
        let fault = match &lock(st).armed {
            Some((f, records)) if !complete_lines(records).is_empty() => *f,
            _ => Fault::Pass,
        };
        match fault {
            Fault::Pass => {}
            Fault::Hold => {
                lock(st).held += 1;
                while !lock(st).released {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Fault::Http500 | Fault::CutReply => lock(st).faulted += 1,
        }
        if fault == Fault::Http500 {
            let _ = conn.write_all(r500);
            return;
        }
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        lock(st).forwarded += 1;
        let mut req = closing_head(&head);
        req.extend_from_slice(&body);
        if up.write_all(&req).is_err() {
            return;
        }
        let mut reply = Vec::new();
        let _ = up.read_to_end(&mut reply);
        let Some(end) = find(&reply, b"\r\n\r\n") else {
            return;
        };
        let mut out = closing_head(&reply[..end + 4]);
        let body = &reply[end + 4..];
        if fault == Fault::CutReply {
            out.extend_from_slice(&body[..body.len() / 2]);
        } else {
            out.extend_from_slice(body);
        }
        let _ = conn.write_all(&out);
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `fault` for every request that arrives once `run`'s first record is on disk.
    pub(crate) fn arm(&self, fault: Fault, run: &Path) {
        lock(&self.state).armed = Some((fault, run.join("records.jsonl")));
    }

    /// Waits until a request is held: the run is mid-query, waiting for the test.
    pub(crate) fn wait_held(&self) {
        wait_for("a request held mid-run", 180, || {
            (lock(&self.state).held > 0).then_some(())
        });
    }

    /// Lets held requests (and all later ones) through.
    pub(crate) fn release(&self) {
        let mut s = lock(&self.state);
        s.released = true;
        s.armed = None;
    }

    /// Requests that got the fault.
    pub(crate) fn faulted(&self) -> usize {
        lock(&self.state).faulted
    }

    /// Requests forwarded to the server.
    pub(crate) fn forwarded(&self) -> usize {
        lock(&self.state).forwarded
    }
}
