// llama-oracle: llama.cpp's view of a reference case, for finding where ferrite's arithmetic
// parts from ggml's. Runs the prompt as one batch, then teacher-forces llama.cpp's greedy
// tokens one at a time (as ../shared/reference was made), printing each step's top-5
// log-probs. With DUMP_DIR and DUMP_STEP it writes every graph tensor of that step (0 = the
// prompt) as raw bytes (DUMP_DIR/NNNN.bin, listed in DUMP_DIR/index.txt with name, op, type
// and shape) and the step's logits (DUMP_DIR/logits.bin, f32).
//   llama-oracle MODEL TOKENS_FILE [DUMP_DIR DUMP_STEP] [THREADS=2] [NOCB]
// TOKENS_FILE: line 1 the prompt ids, line 2 the greedy ids (scripts/llama-oracle/tokens.py).
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <algorithm>

static int g_step = 0, g_dump_step = -1, g_idx = 0;
static std::string g_dir;
static FILE * g_index = nullptr;

static bool cb(struct ggml_tensor * t, bool ask, void *) {
    if (g_step != g_dump_step) return ask ? false : true;
    if (ask) return true;
    char path[1024];
    snprintf(path, sizeof path, "%s/%04d.bin", g_dir.c_str(), g_idx);
    size_t n = ggml_nbytes(t);
    std::vector<char> buf(n);
    ggml_backend_tensor_get(t, buf.data(), 0, n);
    FILE * f = fopen(path, "wb"); fwrite(buf.data(), 1, n, f); fclose(f);
    fprintf(g_index, "%04d %s %s %s %lld %lld %lld %lld contig=%d src0=%s src1=%s\n", g_idx, t->name, ggml_op_desc(t), ggml_type_name(t->type),
        (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], ggml_is_contiguous(t),
        t->src[0] ? t->src[0]->name : "-", t->src[1] ? t->src[1]->name : "-");
    g_idx++;
    return true;
}

static std::vector<llama_token> read_ids(const std::string & line) {
    std::vector<llama_token> v; std::istringstream is(line); int x; while (is >> x) v.push_back(x); return v;
}

int main(int argc, char ** argv) {
    if (argc < 3) { fprintf(stderr, "oracle MODEL TOKENS [DUMP_DIR DUMP_STEP] [THREADS] [NOCB]\n"); return 1; }
    std::ifstream tf(argv[2]); std::string l1, l2; std::getline(tf, l1); std::getline(tf, l2);
    auto prompt = read_ids(l1), greedy = read_ids(l2);
    if (argc >= 5) { g_dir = argv[3]; g_dump_step = atoi(argv[4]); g_index = fopen((g_dir + "/index.txt").c_str(), "w"); }
    int threads = argc >= 6 ? atoi(argv[5]) : 2;
    bool nocb = argc >= 7;
    llama_backend_init();
    auto mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    auto cp = llama_context_default_params();
    cp.n_ctx = prompt.size() + greedy.size() + 8;
    cp.n_batch = prompt.size();
    // ORACLE_CTX / ORACLE_UBATCH: try other context settings than the defaults above.
    if (const char * e = getenv("ORACLE_CTX")) cp.n_ctx = atoi(e);
    if (const char * e = getenv("ORACLE_FA")) cp.flash_attn_type = atoi(e) ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (const char * e = getenv("ORACLE_UBATCH")) { cp.n_ubatch = atoi(e); cp.n_batch = std::max<int>(cp.n_batch, cp.n_ubatch); }
    cp.n_threads = threads; cp.n_threads_batch = threads;
    if (!nocb && g_dump_step >= 0) { cp.cb_eval = cb; cp.cb_eval_user_data = nullptr; }
    llama_context * ctx = llama_init_from_model(model, cp);
    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    auto run = [&](const llama_token * toks, int n, int pos0) {
        llama_batch_ext_clear(batch);
        for (int i = 0; i < n; i++) { int idx = llama_batch_ext_add_token(batch, 0, toks[i]); llama_pos p = pos0 + i; llama_batch_ext_set_pos(batch, idx, &p); }
        // ORACLE_ALL: logits for every row of the batch (no last-layer pruning).
        static const bool all = getenv("ORACLE_ALL") != nullptr;
        for (int i = all ? 0 : n - 1; i < n; i++) llama_batch_ext_set_output_logits(batch, i, true);
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) { fprintf(stderr, "eval failed\n"); exit(1); }
        const float * lg = llama_get_logits_ith(ctx, -1);
        float mx = -INFINITY; for (int i = 0; i < n_vocab; i++) mx = std::max(mx, lg[i]);
        double s = 0; for (int i = 0; i < n_vocab; i++) s += exp((double)lg[i] - mx);
        double lse = mx + log(s);
        std::vector<int> id(n_vocab); for (int i = 0; i < n_vocab; i++) id[i] = i;
        std::partial_sort(id.begin(), id.begin() + 5, id.end(), [&](int a, int b) { return lg[a] > lg[b]; });
        printf("step %d:", g_step); for (int k = 0; k < 5; k++) printf(" %d %.5f", id[k], lg[id[k]] - lse); printf("\n");
        fflush(stdout);
        if (g_step == g_dump_step) { FILE * f = fopen((g_dir + "/logits.bin").c_str(), "wb"); fwrite(lg, 4, n_vocab, f); fclose(f); }
    };
    // ORACLE_SPLIT=k: the first k prompt tokens in a batch of their own (a server's cached prefix).
    int split = getenv("ORACLE_SPLIT") ? atoi(getenv("ORACLE_SPLIT")) : 0;
    if (split > 0 && split < (int) prompt.size()) {
        run(prompt.data(), split, 0);
        g_step = 0;
        run(prompt.data() + split, prompt.size() - split, split);
    } else {
        run(prompt.data(), prompt.size(), 0);
    }
    for (size_t i = 0; i + 1 < greedy.size(); i++) { g_step++; run(&greedy[i], 1, prompt.size() + i); }
    if (g_index) fclose(g_index);
    return 0;
}
