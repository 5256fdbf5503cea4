//! Parsing the standard output of `dllama inference`, in the three formats its releases print.
//!
//! | release | token line | summary |
//! |---|---|---|
//! | v0.12.8 and later | `🔶 Pred%5u ms Sync%5u ms \| Sent%6zu kB Recv%6zu kB \| <piece>` | `Evaluation` / `Prediction` blocks |
//! | v0.12.0–v0.12.7 | `🔶 P%5u ms S%6zu kB R%6zu kB <piece>` | the same blocks |
//! | v0.11 and earlier | `🔶 G %4ld ms I %4ld ms T %4ld ms S %6ld kB R %6ld kB <piece>` (every position, prompt included) | `Generated tokens:`, `Avg tokens / second:` |
//!
//! A piece may contain newlines, so a token is a line starting with `🔶` plus every following line
//! up to the next `🔶`/`🔷` line or the summary; the line break the program prints after each piece
//! is not part of it. Prompt-evaluation lines (`🔷️ Eval … (N tokens)`, `🔷️ E… (N tokens)`) are
//! counted. Anything before the first token line (model header, the echoed prompt) and after the
//! summary (e.g. `time` output) is ignored.

use serde::{Deserialize, Serialize};

/// Which release's format a log is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// v0.12.8 and later (`🔶 Pred`).
    V0_12_8,
    /// v0.12.0 to v0.12.7 (`🔶 P`).
    V0_12_0,
    /// v0.11 and earlier (`🔶 G`, every position printed).
    V0_11,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredToken {
    /// The decoded piece (`~` when the program could not decode it).
    pub piece: String,
    /// Milliseconds the program reports for it (prediction, or generation in v0.11).
    pub ms: u64,
    /// Kilobytes sent so far (cumulative over the run).
    pub sent_kb: u64,
    /// Kilobytes received so far.
    pub recv_kb: u64,
}

/// What a `dllama inference` run printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceLog {
    /// The format found.
    pub format: LogFormat,
    /// Every token line, in order (v0.11: every position, prompt positions included).
    pub tokens: Vec<PredToken>,
    /// The generated text: the pieces joined.
    pub text: String,
    /// Prompt tokens evaluated in batches (`Evaluation nTokens`, the prompt minus its last token);
    /// `None` for v0.11.
    pub eval_tokens: Option<u64>,
    /// Batches of prompt evaluation seen (`🔷` lines).
    pub eval_batches: u64,
    /// The program's prompt-evaluation rate, tokens/s (executor time, not wall clock).
    pub eval_tokens_per_s: Option<f64>,
    /// Tokens predicted (`Prediction nTokens`, or v0.11's `Generated tokens`, which counts every
    /// position).
    pub pred_tokens: u64,
    /// The program's prediction rate, tokens/s (executor time, not wall clock).
    pub pred_tokens_per_s: Option<f64>,
}

fn is_token_line(l: &str) -> bool {
    token_line_format(l).is_some()
}

/// The format of a token line (`🔶 Pred…`, `🔶 P…`, `🔶 G …`); `None` for other lines.
pub fn token_line_format(l: &str) -> Option<LogFormat> {
    if l.starts_with("🔶 Pred") {
        Some(LogFormat::V0_12_8)
    } else if l.starts_with("🔶 G ") {
        Some(LogFormat::V0_11)
    } else if l.starts_with("🔶 P") {
        Some(LogFormat::V0_12_0)
    } else {
        None
    }
}

fn is_eval_line(l: &str) -> bool {
    l.starts_with("🔷")
}

/// The number after `label` in `line`, e.g. `nTokens: 12`.
fn field(line: &str, label: &str) -> Option<String> {
    let t = line.trim();
    t.strip_prefix(label).map(|r| r.trim().to_string())
}

/// Splits a token line into its stats prefix and its piece: the piece starts after the second
/// `kB` and one separator (` ` or ` | `).
fn split_token_line(line: &str, format: LogFormat) -> Result<(PredToken, String), String> {
    let mut idx = 0;
    let mut kb_ends = Vec::new();
    while let Some(p) = line[idx..].find("kB") {
        kb_ends.push(idx + p + 2);
        idx += p + 2;
        if kb_ends.len() == 2 {
            break;
        }
    }
    let end = *kb_ends
        .get(1)
        .ok_or_else(|| format!("not a token line: {line:?}"))?;
    let rest = &line[end..];
    let piece = match format {
        LogFormat::V0_12_8 => rest.strip_prefix(" | ").or_else(|| rest.strip_prefix(" |")),
        _ => rest.strip_prefix(' ').or(Some(rest)),
    }
    .ok_or_else(|| format!("no ` | ` before the piece: {line:?}"))?;
    let stats = &line[..end];
    let numbers: Vec<u64> = stats
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    // v0.12.8: Pred, Sync, Sent, Recv; v0.12.0: P, S, R; v0.11: G, I, T, S, R.
    let (ms, sent, recv) = match (format, numbers.as_slice()) {
        (LogFormat::V0_12_8, [p, _sync, s, r]) => (*p, *s, *r),
        (LogFormat::V0_12_0, [p, s, r]) => (*p, *s, *r),
        (LogFormat::V0_11, [g, _i, _t, s, r]) => (*g, *s, *r),
        _ => return Err(format!("unexpected numbers in a token line: {line:?}")),
    };
    Ok((
        PredToken {
            piece: String::new(),
            ms,
            sent_kb: sent,
            recv_kb: recv,
        },
        piece.to_string(),
    ))
}

/// The token lines (with the lines their pieces continue on) and the prompt-evaluation lines of a
/// region: the tokens, the evaluation batches, the prompt tokens those batches count.
fn read_region(lines: &[&str], format: LogFormat) -> Result<(Vec<PredToken>, u64, u64), String> {
    let mut tokens: Vec<PredToken> = Vec::new();
    let mut eval_batches = 0u64;
    let mut eval_sum = 0u64;
    for line in lines {
        if is_eval_line(line) {
            eval_batches += 1;
            if let Some(n) = line
                .rsplit_once('(')
                .and_then(|(_, r)| r.strip_suffix(" tokens)"))
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                eval_sum = eval_sum.checked_add(n).ok_or_else(|| {
                    format!("the evaluation lines count more than {} tokens", u64::MAX)
                })?;
            }
        } else if is_token_line(line) {
            let (mut t, piece) = split_token_line(line, format)?;
            t.piece = piece;
            tokens.push(t);
        } else if let Some(last) = tokens.last_mut() {
            // A piece that contains a newline continues on this line.
            last.piece.push('\n');
            last.piece.push_str(line);
        }
    }
    Ok((tokens, eval_batches, eval_sum))
}

/// Parses the output of a run that was **stopped** after its last complete token (the backend
/// stops `dllama inference` once it has the tokens asked for): no summary; `output` ends with the
/// line break after the last piece. The prompt tokens come from the evaluation lines, the
/// generated ones are the token lines. v0.11 logs cannot be cut (their token lines include the
/// prompt positions).
pub fn parse_cut(output: &str) -> Result<InferenceLog, String> {
    let body = output.strip_suffix('\n').unwrap_or(output);
    let lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let first = lines
        .iter()
        .position(|l| is_token_line(l) || is_eval_line(l))
        .ok_or("no `🔶` token lines: is this the output of `dllama inference`?")?;
    let format = lines
        .iter()
        .find_map(|l| token_line_format(l))
        .ok_or("no `🔶` token lines before the run was stopped")?;
    if format == LogFormat::V0_11 {
        return Err("a v0.11 log cannot be cut: its token lines include the prompt".into());
    }
    let (tokens, eval_batches, eval_sum) = read_region(&lines[first..], format)?;
    Ok(InferenceLog {
        format,
        text: tokens.iter().map(|t| t.piece.as_str()).collect(),
        eval_tokens: Some(eval_sum),
        eval_batches,
        eval_tokens_per_s: None,
        pred_tokens: tokens.len() as u64,
        pred_tokens_per_s: None,
        tokens,
    })
}

/// Parses the output of `dllama inference`.
pub fn parse(output: &str) -> Result<InferenceLog, String> {
    let lines: Vec<&str> = output
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let first = lines
        .iter()
        .position(|l| is_token_line(l) || is_eval_line(l))
        .ok_or("no `🔶` token lines: is this the output of `dllama inference`?")?;
    let format = match lines.iter().find(|l| is_token_line(l)) {
        Some(l) if l.starts_with("🔶 Pred") => LogFormat::V0_12_8,
        Some(l) if l.starts_with("🔶 G ") => LogFormat::V0_11,
        Some(_) => LogFormat::V0_12_0,
        None => {
            if lines
                .iter()
                .any(|l| l.starts_with("🔷️ Eval") || l.starts_with("🔷 Eval"))
            {
                LogFormat::V0_12_8
            } else {
                LogFormat::V0_12_0
            }
        }
    };
    // Where the summary starts, and where the token region ends.
    let (summary, region_end) = match format {
        LogFormat::V0_11 => {
            // After the token lines, like the summary of the other formats.
            let s = (first..lines.len())
                .rev()
                .find(|&i| lines[i].starts_with("Generated tokens:"))
                .ok_or("no `Generated tokens:` summary (the run did not finish)")?;
            (s, s)
        }
        _ => {
            let s = (first..lines.len())
                .rev()
                .find(|&i| {
                    lines[i] == "Evaluation"
                        && lines
                            .get(i + 1)
                            .is_some_and(|n| n.trim_start().starts_with("nBatches:"))
                })
                .ok_or("no `Evaluation` summary (the run did not finish)")?;
            // The summary is preceded by one empty line of its own.
            let end = if s > first && lines[s - 1].is_empty() {
                s - 1
            } else {
                s
            };
            (s, end)
        }
    };
    let (tokens, eval_batches, eval_sum) = read_region(&lines[first..region_end], format)?;
    let text: String = tokens.iter().map(|t| t.piece.as_str()).collect();
    let mut out = InferenceLog {
        format,
        text,
        eval_tokens: None,
        eval_batches,
        eval_tokens_per_s: None,
        pred_tokens: 0,
        pred_tokens_per_s: None,
        tokens,
    };
    let rate = |s: String| {
        s.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
    };
    match format {
        LogFormat::V0_11 => {
            let n = field(lines[summary], "Generated tokens:")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("`Generated tokens:` is not a number")?;
            out.pred_tokens = n;
            out.pred_tokens_per_s = lines[summary..]
                .iter()
                .find_map(|l| field(l, "Avg tokens / second:"))
                .and_then(rate);
        }
        _ => {
            let block = &lines[summary..];
            let pred_at = block
                .iter()
                .position(|l| *l == "Prediction")
                .ok_or("no `Prediction` block")?;
            let (eval, pred) = block.split_at(pred_at);
            out.eval_tokens = eval
                .iter()
                .find_map(|l| field(l, "nTokens:"))
                .and_then(|s| s.parse().ok());
            out.eval_tokens_per_s = eval
                .iter()
                .find_map(|l| field(l, "tokens/s:"))
                .and_then(rate);
            out.pred_tokens = pred
                .iter()
                .find_map(|l| field(l, "nTokens:"))
                .and_then(|s| s.parse().ok())
                .ok_or("`Prediction nTokens` is not a number")?;
            out.pred_tokens_per_s = pred
                .iter()
                .find_map(|l| field(l, "tokens/s:"))
                .and_then(rate);
            if let Some(e) = out.eval_tokens {
                if eval_batches > 0 && eval_sum != e {
                    return Err(format!(
                        "the evaluation lines count {eval_sum} tokens, the summary {e}"
                    ));
                }
            }
        }
    }
    if out.pred_tokens != out.tokens.len() as u64 {
        return Err(format!(
            "the summary counts {} tokens but {} token lines were printed",
            out.pred_tokens,
            out.tokens.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str =
        include_str!("../../tests/fixtures/distributed-llama/inference_v0.16.4.log");

    #[test]
    fn the_recorded_v0_16_4_log() {
        let log = parse(RECORDED).unwrap();
        assert_eq!(log.format, LogFormat::V0_12_8);
        assert_eq!(log.pred_tokens, 28);
        assert_eq!(log.tokens.len(), 28);
        assert_eq!(log.eval_tokens, Some(12));
        assert_eq!(log.eval_batches, 1);
        assert_eq!(log.eval_tokens_per_s, Some(82.05));
        assert_eq!(log.pred_tokens_per_s, Some(20.43));
        assert_eq!(log.tokens[0].piece, " The");
        assert_eq!(log.tokens[0].ms, 44);
        assert_eq!(log.tokens[13].piece, "rance");
        // `~` pieces and pieces that are a newline (the line after them is empty).
        assert_eq!(log.tokens[15].piece, "~");
        assert_eq!(log.tokens[16].piece, "\n");
        assert_eq!(log.tokens[20].piece, "\n");
        assert!(
            log.text.starts_with(" The answer to this question is: what is the capital of france?~\n~assistant\nThe answer"),
            "{:?}",
            log.text
        );
        assert!(log.text.ends_with(" is:"), "{:?}", log.text);
    }

    #[test]
    fn the_v0_12_0_format() {
        let out = "prompt\n🔷️ E  146 ms S     0 kB R     0 kB (12 tokens)\n🔶 P   44 ms S     3 kB R     4 kB  Hello\n\
                   🔶 P   45 ms S     6 kB R     8 kB  two\nlines\n🔶 P   44 ms S     9 kB R    12 kB !\n\nEvaluation\n   \
                   nBatches: 32\n    nTokens: 12\n   tokens/s: 82.05 (12.19 ms/tok)\nPrediction\n    nTokens: 3\n   \
                   tokens/s: 20.43 (48.95 ms/tok)\n";
        let log = parse(out).unwrap();
        assert_eq!(log.format, LogFormat::V0_12_0);
        assert_eq!(log.text, " Hello two\nlines!");
        assert_eq!(log.tokens[2].sent_kb, 9);
        assert_eq!(log.tokens[2].recv_kb, 12);
        assert_eq!(log.eval_tokens, Some(12));
    }

    #[test]
    fn the_v0_11_format() {
        let out = "🔶 G   40 ms I   30 ms T   10 ms S      0 kB R      0 kB Hello\n\
                   🔶 G   41 ms I   30 ms T   10 ms S     10 kB R     20 kB  world\n\
                   Generated tokens:    2\nAvg tokens / second: 24.39\nAvg generation time: 41.00 ms\n\
                   Avg inference time:  30.00 ms\nAvg transfer time:   10.00 ms\n";
        let log = parse(out).unwrap();
        assert_eq!(log.format, LogFormat::V0_11);
        assert_eq!(log.text, "Hello world");
        assert_eq!(log.pred_tokens, 2);
        assert_eq!(log.pred_tokens_per_s, Some(24.39));
        assert_eq!(log.tokens[1].ms, 41);
        assert_eq!(log.eval_tokens, None);
    }

    #[test]
    fn a_piece_ending_in_a_newline_before_the_summary() {
        let out = "🔶 Pred   44 ms Sync    0 ms | Sent     0 kB Recv     0 kB | a\n\
                   🔶 Pred   44 ms Sync    0 ms | Sent     0 kB Recv     0 kB | \n\n\n\
                   Evaluation\n   nBatches: 32\n    nTokens: 1\n   tokens/s: 1.00 (1.00 ms/tok)\nPrediction\n    \
                   nTokens: 2\n   tokens/s: 1.00 (1.00 ms/tok)\n";
        let log = parse(out).unwrap();
        assert_eq!(log.tokens[1].piece, "\n");
        assert_eq!(log.text, "a\n");
    }

    #[test]
    fn a_run_stopped_after_its_tokens() {
        // The recorded run cut after its 17th token line (a piece that is a newline).
        let cut_at = RECORDED
            .match_indices("🔶 Pred")
            .nth(17)
            .map(|(i, _)| i)
            .unwrap();
        let log = parse_cut(&RECORDED[..cut_at]).unwrap();
        let full = parse(RECORDED).unwrap();
        assert_eq!(log.pred_tokens, 17);
        assert_eq!(log.tokens[..], full.tokens[..17]);
        assert_eq!(log.tokens[16].piece, "\n");
        assert_eq!(log.eval_tokens, Some(12));
        assert_eq!(
            log.text,
            full.tokens[..17]
                .iter()
                .map(|t| t.piece.as_str())
                .collect::<String>()
        );
        let v011 = "🔶 G   40 ms I   30 ms T   10 ms S      0 kB R      0 kB Hello\n";
        assert!(parse_cut(v011).unwrap_err().contains("v0.11"));
        assert!(parse_cut("header only\n").is_err());
    }

    #[test]
    fn truncated_or_inconsistent_logs_are_errors() {
        let cut = &RECORDED[..RECORDED.find("Evaluation").unwrap()];
        assert!(parse(cut).unwrap_err().contains("did not finish"));
        let wrong = RECORDED.replace("    nTokens: 28", "    nTokens: 27");
        assert!(parse(&wrong).unwrap_err().contains("27"));
        assert!(parse("hello\n").is_err());
    }
}
