// ref_loglik: exact single-pass log-likelihoods with llama.cpp (a measuring tool, not built by CI).
//
// For each input line `ID<TAB>ctx ids<TAB>continuation ids` (ids comma-separated, already split as
// lm-eval does) it runs ONE forward pass over ctx + continuation from an empty KV cache, the whole
// sequence in one ubatch, with logits at every position, and prints
// `ID<TAB>sum of log P(continuation)<TAB>greedy (0/1)<TAB>per-token log-probabilities`, the
// log-softmax computed in double precision. Exits non-zero with a message naming the line on bad
// input or a failed decode.
//
// Build against the llama.cpp tree that built llama-server (see README.md here):
//   g++ -O2 -std=c++17 ref_loglik.cpp -I$LLAMA/include -I$LLAMA/ggml/include \
//       -L$LLAMA/build/bin -lllama -lggml -lggml-base -Wl,-rpath,$LLAMA/build/bin -o ref_loglik
// Run: ref_loglik MODEL.gguf THREADS [--server-norm TOP_N] [--kv-offset N] < pairs.tsv > ref.tsv
//
// What it matches. The context uses llama.cpp's defaults, as llama-server does (flash attention
// `auto`, i.e. on for the CPU; F16 K/V cache); the scored sequence sits in KV cells 0..n-1, its
// position p in cell p. That is what llama-server computes for a slot that owns its own KV stream
// (`--no-kv-unified`, or `-np 1`): measured with SmolLM2-135M Q4_1 on the CPU, epi's single-pass
// values on such a server equal these in the logits bit for bit; each log-probability is higher by
// about 1e-4 nats (1.5e-4 at most) per scored token only because llama-server normalises with a
// float32 sum over the vocabulary (get_token_probabilities: partial sort of the top N, expf, sum,
// then logf). `--server-norm TOP_N` (epi's top_n, 100 by default) computes the log-probabilities
// that way instead of in double precision: then the values equal the server's bit for bit. The
// ubatch size (4096 here, 512 on the server: every ubatch of 64 tokens or more gives the same
// numbers), logits at every position vs at the last one, n_seq_max, kv_unified of this context and
// the thread count change nothing here (checked).
// What does change the numbers is where the sequence lies in the KV cache: ggml's CPU flash
// attention walks the cache in tiles of 64 cells (GGML_FA_TILE_KV) with an online softmax, so a
// sequence starting at a cell that is not a multiple of 64 rounds differently, and the model
// amplifies that (presumably through the int8 q8_1 quantisation of activations before every Q4_1
// product): one MMLU distribution moved by up to 0.26 nats over the 64 possible offsets (flash
// attention off: 0.04 nats away from on). With a unified KV cache (llama-server's default with
// several slots) a slot's sequence starts wherever other slots' cells leave room, which depends on
// the server's history, so values on such a server are reproducible there but differed from these
// by up to 0.17 nats on an MMLU answer and 0.71 nats summed over an ARC continuation (12 + 12
// items, `-c 4096`, 4 slots, unified KV).
// `--kv-offset N` (default 0) first fills N cells with another sequence, to show the effect.
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

static std::vector<llama_token> parse_ids(const std::string & s, size_t line, const char * field) {
    std::vector<llama_token> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char * end = nullptr;
        long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 0) {
            std::fprintf(stderr, "stdin:%zu: %s: `%s` is not a token id\n", line, field, item.c_str());
            std::exit(3);
        }
        out.push_back((llama_token) v);
    }
    return out;
}

int main(int argc, char ** argv) {
    int kv_offset = 0;
    int server_top_n = 0;  // 0: log-softmax in double precision
    bool bad = argc < 3;
    for (int i = 3; !bad && i < argc; i += 2) {
        const std::string opt = argv[i];
        const int v = i + 1 < argc ? std::atoi(argv[i + 1]) : -1;
        if (opt == "--kv-offset" && v >= 0 && v <= 1024) {
            kv_offset = v;
        } else if (opt == "--server-norm" && v >= 1) {
            server_top_n = v;
        } else {
            bad = true;
        }
    }
    if (bad) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS [--server-norm TOP_N] [--kv-offset 0..1024] < pairs.tsv\n",
                     argv[0]);
        return 2;
    }
    const int n_threads = std::atoi(argv[2]);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "%s: cannot load the model\n", argv[1]);
        return 4;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const uint32_t n_max = 4096;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_max + (uint32_t) kv_offset;
    cp.n_batch = n_max;
    cp.n_ubatch = n_max;  // the whole sequence in one ubatch: one forward pass
    cp.n_seq_max = kv_offset > 0 ? 2 : 1;
    cp.kv_unified = kv_offset > 0;  // the padding sequence shares the cells, as on a unified server
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "cannot create a context of %u tokens\n", n_max);
        return 4;
    }
    std::string line;
    size_t lineno = 0;
    while (std::getline(std::cin, line)) {
        lineno++;
        if (line.empty()) {
            continue;
        }
        std::vector<std::string> f;
        std::stringstream ss(line);
        std::string part;
        while (std::getline(ss, part, '\t')) {
            f.push_back(part);
        }
        if (f.size() != 3) {
            std::fprintf(stderr, "stdin:%zu: expected ID<TAB>ctx ids<TAB>continuation ids, got %zu fields\n",
                         lineno, f.size());
            return 3;
        }
        std::vector<llama_token> c = parse_ids(f[1], lineno, "ctx ids");
        std::vector<llama_token> k = parse_ids(f[2], lineno, "continuation ids");
        if (c.empty() || k.empty() || c.size() + k.size() > n_max) {
            std::fprintf(stderr, "stdin:%zu: need 1..%u tokens of context + continuation, got %zu + %zu\n",
                         lineno, n_max, c.size(), k.size());
            return 3;
        }
        std::vector<llama_token> all = c;
        all.insert(all.end(), k.begin(), k.end());
        llama_memory_clear(llama_get_memory(ctx), true);
        if (kv_offset > 0) {
            // occupy cells 0..kv_offset-1 with sequence 1 (masked out for sequence 0)
            llama_batch d = llama_batch_init(kv_offset, 0, 1);
            for (int i = 0; i < kv_offset; i++) {
                d.token[i] = all[(size_t) i % all.size()];
                d.pos[i] = (llama_pos) i;
                d.n_seq_id[i] = 1;
                d.seq_id[i][0] = 1;
                d.logits[i] = 0;
            }
            d.n_tokens = kv_offset;
            if (llama_decode(ctx, d) != 0) {
                std::fprintf(stderr, "stdin:%zu: llama_decode of the KV padding failed\n", lineno);
                return 4;
            }
            llama_batch_free(d);
        }
        llama_batch b = llama_batch_init((int32_t) all.size(), 0, 1);
        for (size_t i = 0; i < all.size(); i++) {
            b.token[i] = all[i];
            b.pos[i] = (llama_pos) i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;  // logits at every position
        }
        b.n_tokens = (int32_t) all.size();
        if (llama_decode(ctx, b) != 0) {
            std::fprintf(stderr, "stdin:%zu: llama_decode failed\n", lineno);
            return 4;
        }
        double sum = 0.0;
        bool greedy = true;
        std::ostringstream per;
        for (size_t j = 0; j < k.size(); j++) {
            const float * lg = llama_get_logits_ith(ctx, (int32_t) (c.size() + j - 1));
            double mx = -INFINITY;
            int arg = 0;
            for (int v = 0; v < n_vocab; v++) {
                if (lg[v] > mx) {
                    mx = lg[v];
                    arg = v;
                }
            }
            double se = 0.0;
            for (int v = 0; v < n_vocab; v++) {
                se += std::exp((double) lg[v] - mx);
            }
            double lp = (double) lg[k[j]] - mx - std::log(se);
            if (server_top_n > 0) {
                // llama-server's get_token_probabilities() and logarithm(), in float32
                std::vector<llama_token_data> cur(n_vocab);
                for (int v = 0; v < n_vocab; v++) {
                    cur[v] = llama_token_data{ (llama_token) v, lg[v], 0.0f };
                }
                std::partial_sort(cur.begin(), cur.begin() + std::min(server_top_n, n_vocab), cur.end(),
                                  [](const llama_token_data & a, const llama_token_data & b) {
                                      return a.logit > b.logit;
                                  });
                const float max_l = cur[0].logit;
                float cum_sum = 0.0f;
                for (auto & t : cur) {
                    t.p = expf(t.logit - max_l);
                    cum_sum += t.p;
                }
                for (auto & t : cur) {
                    t.p /= cum_sum;
                    if (t.id == k[j]) {
                        lp = t.p == 0.0f ? (double) std::numeric_limits<float>::lowest() : (double) std::log(t.p);
                    }
                }
            }
            sum += lp;
            if (arg != k[j]) {
                greedy = false;
            }
            per << (j ? "," : "") << lp;
        }
        llama_batch_free(b);
        std::printf("%s\t%.9f\t%d\t%s\n", f[0].c_str(), sum, greedy ? 1 : 0, per.str().c_str());
        std::fflush(stdout);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
