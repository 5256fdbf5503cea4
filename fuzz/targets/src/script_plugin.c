/* A dynamic epi-bench power-source plugin (ABI v1, see epi_framework::dynamic) whose every answer
 * is scripted by the fuzz target `dynamic_plugin`: the descriptor's key and description, the
 * create error, the SourceInfo JSON of open, and the batch JSON of each next_batch call, set
 * through `epi_fuzz_script` before the host loads it. Compiled with the system C compiler at the
 * first use (the e2e tests build their refused plugins the same way). An answer starting with '!'
 * is returned as an error (the rest is the message). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t abi_version;
    uint32_t kind;
    const char *key;
    const char *description;
    void *(*create)(const char *config_json, char **err);
    char *(*open)(void *inst, char **err);
    char *(*next_batch)(void *inst, uint32_t timeout_ms, char **err);
    void (*close)(void *inst);
    void (*free_string)(char *s);
} EpiPluginV1;

#define MAX_PARTS 64
static char *script;
static const char *parts[MAX_PARTS];
static size_t n_parts, next_part;
static int instance;

static char *dup_text(const char *s) {
    size_t n = strlen(s);
    char *c = malloc(n + 1);
    if (c) memcpy(c, s, n + 1);
    return c;
}

/* The scripted answer `i`: a string for the host (NULL and *err set for an error). */
static char *answer(size_t i, const char *otherwise, char **err) {
    const char *a = i < n_parts ? parts[i] : otherwise;
    if (a[0] == '!') {
        if (err) *err = dup_text(a + 1);
        return NULL;
    }
    return dup_text(a);
}

static void *create(const char *config_json, char **err) {
    (void)config_json;
    if (n_parts > 2 && parts[2][0] != '\0') {
        if (err) *err = dup_text(parts[2]);
        return NULL;
    }
    next_part = 4;
    return &instance;
}

static char *open_(void *inst, char **err) {
    (void)inst;
    return answer(3, "{\"source\":\"x\",\"method\":\"integrated\",\"instrument\":\"script\",\"sample_rate_hz\":null,\"accuracy_rel\":null,\"channels\":[]}", err);
}

static char *next_batch(void *inst, uint32_t timeout_ms, char **err) {
    (void)inst;
    (void)timeout_ms;
    return answer(next_part++, "null", err);
}

static void close_(void *inst) { (void)inst; }

static void free_string(char *s) { free(s); }

uint32_t epi_plugin_abi_version = 1;

EpiPluginV1 epi_plugin_v1 = {1, 1, "fuzz", "", create, open_, next_batch, close_, free_string};

/* Sets the script: NUL-separated answers (key, description, create error, open, batches...), and
 * the version and kind numbers the library and its descriptor declare. */
void epi_fuzz_script(const char *data, size_t len, uint32_t lib_abi, uint32_t desc_abi,
                     uint32_t kind) {
    free(script);
    script = malloc(len + 1);
    if (!script) {
        n_parts = 0;
        return;
    }
    memcpy(script, data, len);
    script[len] = '\0';
    n_parts = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len && n_parts < MAX_PARTS; i++) {
        if (i == len || script[i] == '\0') {
            script[i] = '\0';
            parts[n_parts++] = script + start;
            start = i + 1;
        }
    }
    epi_plugin_abi_version = lib_abi;
    epi_plugin_v1.abi_version = desc_abi;
    epi_plugin_v1.kind = kind;
    epi_plugin_v1.key = n_parts > 0 ? parts[0] : "fuzz";
    epi_plugin_v1.description = n_parts > 1 ? parts[1] : "";
    next_part = 4;
}
