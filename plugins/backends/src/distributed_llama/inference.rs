//! Inference mode: one `dllama inference` run per request, read as it comes and **stopped once the
//! tokens asked for are generated**.
//!
//! `dllama inference` flushes its output after the prompt evaluation (`🔷️ Eval … (N tokens)`
//! lines) and after every generated token (`🔶 Pred … | <piece>`), but generation runs to
//! `--steps` positions, prompt included, whatever the prompt's token count: the steps are an upper
//! bound (the prompt's UTF-8 length + 1 + `max_tokens`, or `inference_steps`), and the backend stops
//! the process (TERM to its process group) when the token line after the `max_tokens`-th arrives —
//! only then is the last piece known to be whole (a piece may span lines). Only those
//! `max_tokens` tokens are counted and returned ([`inference_log::parse_cut`]); the prompt tokens
//! are the evaluated ones plus the one fed with the first prediction. A run that ends by itself
//! (fewer positions than asked, e.g. at `max_seq_len`) is parsed whole, summary included
//! ([`inference_log::parse`]). v0.11 logs print a line per position, prompt included: they are read
//! whole, and their token counts are unknown.
//!
//! Failures: a run that ends unsuccessfully is [`BackendError::BadReply`] with its `Critical
//! error` and last lines; one that runs past `timeout_s` is stopped and is
//! [`BackendError::Timeout`]; a worker that does not listen again for the next root is
//! [`BackendError::Unavailable`].

use super::inference_log::{self, LogFormat};
use super::{DllamaBackend, KEY};
use epi_core::backend::{BackendError, GenerateRequest, GenerateResponse, TokenCountSource};
use epi_ssh::ProcessEvent;
use std::time::{Duration, Instant};

/// `--steps` for `prompt` and `max_tokens`: `inference_steps` when set, else an upper bound of the
/// prompt's token count (its UTF-8 length, plus 1 for the BOS token) plus `max_tokens`, capped at
/// `max_seq_len`.
pub fn steps_for(
    prompt: &str,
    max_tokens: u32,
    inference_steps: Option<u32>,
    max_seq_len: u32,
) -> u32 {
    match inference_steps {
        Some(s) => s,
        None => {
            let bound = prompt.len() as u64 + 1 + max_tokens as u64;
            bound.min(max_seq_len as u64) as u32
        }
    }
}

/// What reading a run gave.
struct Read {
    out: String,
    err_tail: Vec<String>,
    /// `Some` when the process ended by itself.
    status: Option<Option<epi_ssh::RemoteExit>>,
    /// When the last counted token line arrived.
    last_token_at: Option<Instant>,
}

impl DllamaBackend {
    pub(super) async fn run_inference(
        &self,
        req: &GenerateRequest,
    ) -> Result<GenerateResponse, BackendError> {
        let _one = self.inference_lock.lock().await;
        self.workers_listening().await?;
        let steps = steps_for(
            &req.prompt,
            req.max_tokens,
            self.config.inference_steps,
            self.config.max_seq_len,
        );
        let mut argv = vec![self.config.dllama.clone(), "inference".into()];
        argv.extend(self.root_args());
        argv.extend([
            "--prompt".to_string(),
            req.prompt.clone(),
            "--steps".into(),
            steps.to_string(),
        ]);
        let workers = self.worker_args();
        if !workers.is_empty() {
            argv.push("--workers".into());
            argv.extend(workers);
        }
        let host = &self.nodes[0].host;
        let session = self.session(host)?;
        let t0 = Instant::now();
        let mut p = session.spawn(&argv).await.map_err(|e| self.ssh_err(e))?;
        let limit = Duration::from_secs_f64(self.config.timeout_s);
        let deadline = tokio::time::Instant::now() + limit;
        let want = u64::from(req.max_tokens);
        let mut read = Read {
            out: String::new(),
            err_tail: Vec::new(),
            status: None,
            last_token_at: None,
        };
        let mut counted = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, p.next_event()).await {
                Ok(Some(ProcessEvent::Stdout(l))) => {
                    let format = inference_log::token_line_format(&l);
                    if format.is_some_and(|f| f != LogFormat::V0_11) {
                        if counted == want {
                            break; // the previous piece is whole: stop here
                        }
                        counted += 1;
                        read.last_token_at = Some(Instant::now());
                    }
                    read.out.push_str(&l);
                    read.out.push('\n');
                }
                Ok(Some(ProcessEvent::Stderr(l))) => read.err_tail.push(l),
                Ok(Some(ProcessEvent::Exited(s))) => {
                    read.status = Some(Some(s));
                    break;
                }
                Ok(None) => {
                    read.status = Some(None);
                    break;
                }
                Err(_) => {
                    let _ = p.stop(self.grace()).await;
                    return Err(BackendError::Timeout {
                        backend: KEY.into(),
                        attempts: 1,
                        message: format!(
                            "`dllama inference` ran longer than {:.0} s",
                            limit.as_secs_f64()
                        ),
                    });
                }
            }
        }
        let cut = read.status.is_none();
        if cut {
            let _ = p.stop(self.grace()).await;
        }
        let latency_s = match (cut, read.last_token_at) {
            (true, Some(t)) => (t - t0).as_secs_f64(),
            _ => t0.elapsed().as_secs_f64(),
        };
        let log = if cut {
            inference_log::parse_cut(&read.out)
        } else {
            if let Some(status) = read.status.clone() {
                if !status.as_ref().is_some_and(|s| s.success()) {
                    return Err(failed(status, &read));
                }
            }
            inference_log::parse(&read.out)
        }
        .map_err(|m| BackendError::BadReply {
            backend: KEY.into(),
            message: format!("`dllama inference` output: {m}"),
        })?;
        let (tokens_in, tokens_out, source) = match log.format {
            LogFormat::V0_11 => (None, None, TokenCountSource::Unknown),
            // The last prompt token is fed in the first prediction step: prompt = eval + 1.
            _ => (
                log.eval_tokens.map(|e| e + 1),
                Some(log.pred_tokens),
                TokenCountSource::Usage,
            ),
        };
        Ok(GenerateResponse {
            text: log.text,
            tokens_in,
            tokens_out,
            token_count_source: source,
            cached_tokens: None,
            ttft_s: None,
            latency_s,
            finish_reason: Some("length".into()),
        })
    }
}

/// The error of a run that ended unsuccessfully: its `Critical error` line and last lines.
fn failed(status: Option<epi_ssh::RemoteExit>, read: &Read) -> BackendError {
    let critical = read
        .out
        .lines()
        .find(|l| l.contains("Critical error"))
        .unwrap_or("")
        .to_string();
    let all: Vec<&str> = read
        .out
        .lines()
        .chain(read.err_tail.iter().map(String::as_str))
        .collect();
    let tail = all[all.len().saturating_sub(15)..].join("\n");
    BackendError::BadReply {
        backend: KEY.into(),
        message: format!(
            "`dllama inference` ended ({}) {critical}; last output:\n{tail}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "connection lost".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_bound_the_prompt_and_the_tokens_asked_for() {
        assert_eq!(steps_for("Hello there", 16, None, 4096), 11 + 1 + 16);
        assert_eq!(steps_for("é", 1, None, 4096), 2 + 1 + 1, "UTF-8 bytes");
        assert_eq!(steps_for(&"x".repeat(5000), 16, None, 4096), 4096);
        assert_eq!(steps_for("Hello", 16, Some(40), 4096), 40);
    }
}
