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
// Run: ref_loglik MODEL.gguf THREADS < pairs.tsv > ref.tsv
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
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
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS < pairs.tsv\n", argv[0]);
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
    cp.n_ctx = n_max;
    cp.n_batch = n_max;
    cp.n_ubatch = n_max;  // the whole sequence in one ubatch: one forward pass
    cp.n_seq_max = 1;
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
