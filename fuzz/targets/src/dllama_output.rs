//! Target `dllama_output`: the parser of `dllama inference`'s standard output
//! (`distributed_llama::inference_log::parse`), in each of the formats of its releases. It either
//! refuses the text with a message, or returns a log that agrees with itself: as many token lines
//! as the summary counts, and the text the pieces joined.
//!
//! Input: the output's bytes (read as UTF-8 with replacement, as the backend reads SSH output).

use epi_backends::distributed_llama::inference_log::parse;

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(log) => {
            assert_eq!(
                log.pred_tokens,
                log.tokens.len() as u64,
                "the summary's count and the token lines disagree"
            );
            let joined: String = log.tokens.iter().map(|t| t.piece.as_str()).collect();
            assert_eq!(log.text, joined, "the text is not the pieces joined");
            for rate in [log.eval_tokens_per_s, log.pred_tokens_per_s]
                .into_iter()
                .flatten()
            {
                assert!(!rate.is_nan(), "a rate that is not a number");
            }
        }
        Err(message) => assert!(!message.is_empty(), "an empty error message"),
    }
}
