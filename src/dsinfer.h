/* dsinfer.h — the public API of libdsinfer, a CPU inference runtime for
 * DeepSeek V3 / V3.1 / V3.2 checkpoints.
 *
 * All objects are opaque handles.  Functions report failure through a
 * ds_status and, when the caller passes one, a ds_error holding a one-line
 * message.  The library never prints and never exits. */
#ifndef DSINFER_H
#define DSINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSINFER_VERSION "0.1.0"

typedef enum ds_status {
    DS_OK = 0,
    DS_ERR_INVALID_ARG,   /* bad parameter from the caller */
    DS_ERR_IO,            /* file missing, unreadable, short read */
    DS_ERR_FORMAT,        /* malformed / inconsistent checkpoint or input file */
    DS_ERR_UNSUPPORTED,   /* valid but not supported (dtype, architecture) */
    DS_ERR_NOMEM,         /* allocation failed */
    DS_ERR_CONTEXT_FULL,  /* the context has no room for more tokens */
    DS_ERR_INPUT          /* bad user input (token id out of range, invalid UTF-8) */
} ds_status;

typedef struct ds_error {
    ds_status code;
    char msg[512];
} ds_error;

/* Short English name of a status code ("format error", ...). */
const char *ds_status_str(ds_status s);
const char *ds_version(void);
/* SIMD level the kernels run with ("scalar", "avx2", "avx512", "neon"); chosen once from
 * the CPU, or forced with the environment variable DSINFER_ISA. */
const char *ds_kernel_isa(void);
/* Threads "all cores" (threads = 0 below) means: OpenMP's setting
 * (OMP_NUM_THREADS, else one per CPU), unless that is more than 8 per
 * online CPU or more than DS_MAX_THREADS (a typo such as 100000 would start
 * that many threads in every parallel region), then one per online CPU. */
#define DS_MAX_THREADS 4096
#define DS_MAX_CTX_SIZE (1 << 24)   /* positions a context may hold */
int ds_default_threads(void);

/* ---- model ---------------------------------------------------------- */
typedef struct ds_model ds_model;

typedef struct ds_model_info {
    char model_type[32];     /* "deepseek_v3" or "deepseek_v32" */
    int vocab_size;
    int hidden_size;
    int num_layers;
    int first_dense_layers;
    int num_heads;
    int q_lora_rank;
    int kv_lora_rank;
    int qk_nope_dim, qk_rope_dim, v_head_dim;
    int n_routed_experts, n_shared_experts, experts_per_token;
    int n_group, topk_group;
    int has_indexer;         /* DSA lightning indexer present (V3.2) */
    int index_n_heads, index_head_dim, index_topk;
    int bos_token_id, eos_token_id;
    int max_position_embeddings;
    int scale_ue8m0;         /* quantization_config.scale_fmt == "ue8m0" */
    int numa_nodes;          /* NUMA nodes of the placement plan (1 when off) */
    int numa_replicas;       /* copies of the dense weights: numa_nodes with DS_NUMA_REPLICATE
                                when RAM allowed it, else 1 */
    int64_t replica_bytes;   /* bytes of each such copy (0 when not replicated) */
    int64_t dense_copy_bytes; /* dense matrices copied from the mapped files into huge-page RAM
                                because experts stream (0 when the whole checkpoint is in RAM
                                or mapped) */
    int64_t n_tensors;
    int64_t weight_bytes;    /* bytes of all tensors in the checkpoint */
    int64_t expert_bytes;    /* bytes of all routed experts */
    int64_t active_bytes_per_token;  /* weight bytes one decoded token reads: dense weights,
                                        experts_per_token of the routed experts per MoE layer,
                                        one embedding row */
} ds_model_info;

typedef enum ds_io_mode {
    DS_IO_MODE_AUTO = 0,     /* io_uring when the kernel allows it, else pread */
    DS_IO_MODE_URING,
    DS_IO_MODE_PREAD
} ds_io_mode;

#define DS_EXPERT_BUDGET_ALL (-1)

enum { DS_NUMA_OFF = 0, DS_NUMA_ON = 1, DS_NUMA_REPLICATE = 2 };

typedef struct ds_load_params {
    int threads;             /* 0 = all cores (ds_default_threads); at most DS_MAX_THREADS */
    /* Bytes of RAM for routed-expert slabs: a budget smaller than the
     * experts keeps that many slabs in an expert cache and streams the others
     * from disk on demand.  0 (default) = auto: every expert stays mapped
     * when the checkpoint fits in available memory with headroom, else the
     * memory left after the dense weights and headroom becomes the budget.
     * DS_EXPERT_BUDGET_ALL = every expert stays mapped whatever the memory. */
    int64_t expert_budget;
    ds_io_mode io;           /* how streamed experts are read */
    int weights_in_ram;      /* 1: copy the checkpoint into process memory (huge pages),
                                0: use it through the page cache (mmap), -1 (default):
                                copy when every expert is resident and it fits in half
                                of the available memory */
    int numa;                /* DS_NUMA_ON (default): place threads and expert slabs by NUMA
                                node (hwloc; experts partitioned across nodes, no copies);
                                DS_NUMA_REPLICATE: also one copy of the dense weights in
                                each node's memory when RAM allows; DS_NUMA_OFF: off */
} ds_load_params;

void ds_load_params_init(ds_load_params *p);

/* Loads (maps and validates) an HF checkpoint directory: config.json plus
 * model.safetensors.index.json and its shards, or a single model.safetensors. */
ds_status ds_model_load(const char *dir, const ds_load_params *p, ds_model **out, ds_error *err);
void ds_model_free(ds_model *m);
const ds_model_info *ds_model_get_info(const ds_model *m);
/* Weight bytes one decoded token reads in block `layer` (its dense tensors
 * plus experts_per_token of its routed experts' average size); layer ==
 * num_layers: the rest (embedding row, final norm, output head).  -1 for
 * another layer number. */
int64_t ds_model_layer_bytes(const ds_model *m, int layer);

/* Expert cache counters (see ds_load_params.expert_budget). */
typedef struct ds_expert_stats {
    int streaming;           /* 0: every expert resident; 1: slabs streamed from disk */
    int slots;               /* slabs the budget holds */
    int64_t slab_bytes;      /* bytes of the largest slab */
    uint64_t hits, misses;   /* lookups served from RAM / read from disk */
    uint64_t bytes_read;
    double stall_seconds;    /* time the forward pass waited for reads */
    uint64_t prefetched;     /* slabs read ahead (next-layer prediction) */
    uint64_t prefetch_used;  /* ... that the next layer then used */
    uint64_t predicted, predicted_right;  /* next-layer experts predicted / correct */
    const char *io_backend;  /* "io_uring", "pread" or "mmap" */
    uint64_t io_requests;    /* read requests submitted for slabs: 3 per expert read, or 1 when
                                its parts lie in the file as in the slab (dsinfer-quantize --repack) */
    int64_t numa_bound_bytes; /* resident expert bytes bound to their node's memory (0 on one node) */
} ds_expert_stats;
void ds_model_expert_stats(ds_model *m, ds_expert_stats *s);

/* Read-only description of one checkpoint tensor (for inspection tools). */
typedef struct ds_tensor_info {
    const char *name;
    const char *dtype;       /* safetensors spelling: "F8_E4M3", "BF16", ... */
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
    const char *file;        /* path of the file holding it */
} ds_tensor_info;

int ds_model_tensor_count(const ds_model *m);
ds_status ds_model_tensor_info(const ds_model *m, int i, ds_tensor_info *out, ds_error *err);

/* ---- context: one sequence and its KV cache --------------------------- */
typedef struct ds_context ds_context;

typedef enum ds_kv_type {
    DS_KV_FP8 = 0,           /* latent as e4m3 with one scale per 128 values (DeepSeek's deployment) */
    DS_KV_F32 = 1,           /* latent in f32 (the strict conformance mode) */
    DS_KV_FP8_COMPACT = 2    /* as DS_KV_FP8 with the rope key in bf16: DeepSeek's 788-byte
                                layout (916 bytes per position and layer for DS_KV_FP8) */
} ds_kv_type;

/* Arithmetic of the weight products.  DS_PRECISION_F32 (the default) is
 * exact f32: weights dequantised exactly, activations unrounded.
 * DS_PRECISION_BF16 rounds the activations to bf16 in every product with
 * FP8, BF16, Q8_0 or Q4_K weights (attention and indexer projections, the
 * dense MLP and shared expert, routed experts, lm_head), decode included,
 * and sums in f32;
 * weights stay exact (their codes are exact in bf16, block scales applied
 * in f32).  Where the CPU has AVX512_BF16 (ds_precision_bf16_native) the
 * products run on its instructions: from DS_BF16_MIN_TOKENS rows about
 * twice as fast as f32, and below it (decode) for BF16, FP8, Q8_0 and Q4_K
 * weights through a streaming kernel (with AVX512_VBMI too).  The others,
 * and every product on other CPUs, round the activations and use the f32
 * kernels: the same products, so results
 * depend on how tokens are grouped into steps only through f32 summation
 * order, as with f32.  The MoE router, the DSA indexer's scoring and
 * selection, and attention itself (kv_b included) stay exact. */
typedef enum ds_precision {
    DS_PRECISION_F32 = 0,
    DS_PRECISION_BF16 = 1
} ds_precision;
#define DS_BF16_MIN_TOKENS 16
/* "f32" / "bf16" ("?" when out of range). */
const char *ds_precision_name(ds_precision p);
/* 1 when DS_PRECISION_BF16 runs its prefill-sized products on AVX512_BF16
 * instructions on this CPU and kernel level (DSINFER_ISA below avx512 turns
 * them off); 0: the activations are still rounded, with no speed-up. */
int ds_precision_bf16_native(void);

typedef struct ds_context_params {
    int ctx_size;            /* positions in the KV arena; 0 = 4096 capped by the model's max;
                                at most DS_MAX_CTX_SIZE */
    ds_kv_type kv_type;
    int threads;             /* 0 = keep the current OpenMP setting */
    /* DSA indexer scoring + top-k: 0 = CPU, 1 = GPU when the build has CUDA
     * and a device is usable (else CPU, see ds_context_indexer_note).  The
     * environment variable DSINFER_INDEXER=cpu|gpu overrides it. */
    int indexer_device;
    /* Weight-product arithmetic (default DS_PRECISION_F32, exact).  A step
     * of ds_eval_batch rounds only when every context in it asks for bf16. */
    ds_precision precision;
} ds_context_params;

void ds_context_params_init(ds_context_params *p);
ds_status ds_context_create(ds_model *m, const ds_context_params *p, ds_context **out, ds_error *err);
void ds_context_free(ds_context *c);
int ds_context_pos(const ds_context *c);      /* tokens in the cache */
int ds_context_size(const ds_context *c);
/* Forget cached tokens from position pos on (0 = clear). */
ds_status ds_context_truncate(ds_context *c, int pos, ds_error *err);
/* 1 while the DSA indexer runs on the GPU.  The note is NULL, or one line
 * for tools to print (GPU requested but unavailable, or dropped after a GPU
 * error: results stay identical, the CPU takes over). */
int ds_context_indexer_on_gpu(const ds_context *c);
const char *ds_context_indexer_note(const ds_context *c);
/* 1 when the context's KV arena is locked in RAM (mlock); 0 when
 * RLIMIT_MEMLOCK refused it and it may be paged out (see ds_context_kv_bytes). */
int ds_context_kv_locked(const ds_context *c);
/* Bytes of the context's KV arena. */
size_t ds_context_kv_bytes(const ds_context *c);
/* KV bytes per position and layer of a cache type: 916 for DS_KV_FP8 and 788
 * for DS_KV_FP8_COMPACT at DeepSeek-V3.2's dimensions. */
size_t ds_kv_bytes_per_position_layer(const ds_model *m, ds_kv_type t);   /* 0: NULL m or unknown t */

/* Runs n tokens at the context's current position (prefill when n > 1,
 * decode when n == 1) and appends them to the cache.  logits receives
 * n * vocab_size floats when all_logits is non-zero, else vocab_size floats
 * for the last token; it may be NULL. */
ds_status ds_eval(ds_context *c, const int32_t *tokens, int n, float *logits,
                  int all_logits, ds_error *err);

/* One sequence's share of a batched step: n tokens appended to ctx at its
 * current position; logits as for ds_eval (may be NULL). */
typedef struct ds_batch_item {
    ds_context *ctx;
    const int32_t *tokens;
    int n;
    float *logits;
    int all_logits;
} ds_batch_item;

/* Runs one step over several sequences of the same model at once: attention
 * per sequence, the FFN / MoE over all tokens together (each expert's weights
 * are read once for every token routed to it).  Contexts must be distinct.
 * On error no context advances. */
ds_status ds_eval_batch(const ds_batch_item *items, int n_items, ds_error *err);

/* Observation hooks for debugging and conformance dumps.  The callback runs
 * synchronously inside ds_eval. */
typedef enum ds_trace_kind {
    DS_TRACE_LAYER_OUT = 1,      /* float[hidden]: residual stream after block `layer` */
    DS_TRACE_INDEXER_TOPK,       /* int32[n]: selected key positions, ascending */
    DS_TRACE_INDEXER_SCORES,     /* float[n = pos+1]: indexer scores of keys 0..pos */
    DS_TRACE_MOE_EXPERTS,        /* int32[k]: routed experts, ascending */
    DS_TRACE_MOE_WEIGHTS,        /* float[k]: their weights, aligned with DS_TRACE_MOE_EXPERTS */
    DS_TRACE_ATTN_ROWS           /* int32[1]: latent rows attention read for this query (all heads) */
} ds_trace_kind;
typedef void (*ds_trace_fn)(void *user, ds_trace_kind kind, int layer, int pos,
                            const void *data, int n);
void ds_context_set_trace(ds_context *c, ds_trace_fn fn, void *user);

/* ---- sampling --------------------------------------------------------- */
typedef struct ds_sampler_params {
    float temperature;       /* 0 = greedy */
    float top_p;             /* 1 = off */
    int top_k;               /* 0 = off */
    uint64_t seed;
} ds_sampler_params;

void ds_sampler_params_init(ds_sampler_params *p);
typedef struct ds_sampler ds_sampler;
ds_status ds_sampler_create(const ds_sampler_params *p, ds_sampler **out, ds_error *err);
void ds_sampler_free(ds_sampler *s);
/* The chosen token id; -1 when s or logits is NULL, vocab_size <= 0, a
 * logit is NaN (the forward pass met a weight holding NaN or Inf: no token
 * is meaningful) or every logit is -Inf.  A +Inf logit is chosen. */
int32_t ds_sampler_sample(ds_sampler *s, const float *logits, int vocab_size);

/* ---- JSON Schema constrained decoding ---------------------------------- */
/* A compiled schema is a byte-level pushdown automaton accepting exactly the
 * compact JSON texts (no whitespace outside strings) that the generator may
 * produce for it.  Supported: "type" (a name or a list whose members start
 * with different characters), "enum", "const", "anyOf" / "oneOf" (when the
 * alternatives start with different characters), "properties", "required",
 * "additionalProperties", "items", "minItems", "maxItems", "minLength",
 * "maxLength", and the annotations (title, description, default, examples,
 * $schema, $id, $comment).  Objects with properties are generated with their
 * declared properties only, in declared order (optional ones may be left
 * out); an object with no properties is free-form.  {} or true is any JSON
 * value.  Any other keyword fails compilation with a message naming it.
 * A schema is immutable; one may be shared by threads and requests. */
typedef struct ds_json_schema ds_json_schema;
ds_status ds_json_schema_compile(const char *schema_json, size_t len, ds_json_schema **out, ds_error *err);
void ds_json_schema_free(ds_json_schema *s);

/* A tokenizer's tokens as byte strings in a trie, for computing token masks
 * (special and added tokens are never allowed inside JSON).  Immutable;
 * the tokenizer may be freed after creating it. */
struct ds_tokenizer;
typedef struct ds_json_vocab ds_json_vocab;
ds_status ds_json_vocab_create(const struct ds_tokenizer *t, ds_json_vocab **out, ds_error *err);
void ds_json_vocab_free(ds_json_vocab *v);

/* The state of one generation against a schema. */
typedef struct ds_json_matcher ds_json_matcher;
ds_status ds_json_matcher_create(const ds_json_schema *s, ds_json_matcher **out, ds_error *err);
void ds_json_matcher_free(ds_json_matcher *m);
/* A copy of m's state (to try bytes without committing them). */
ds_status ds_json_matcher_clone(const ds_json_matcher *m, ds_json_matcher **out, ds_error *err);
/* Feeds bytes: 1 when all are accepted (the state advances), 0 when not
 * (the state is unchanged). */
int ds_json_matcher_feed(ds_json_matcher *m, const char *bytes, size_t len);
/* The bytes so far form a complete value (a number may still grow). */
int ds_json_matcher_can_end(const ds_json_matcher *m);
/* Complete, and no further byte is accepted. */
int ds_json_matcher_done(const ds_json_matcher *m);
/* allowed[id] = 1 for each id < n whose token may come next, else 0; eos_id
 * (ignored when < 0) is allowed exactly when the value can end.  Returns the
 * number allowed (0 for a NULL argument or n <= 0). */
int ds_json_matcher_allowed(ds_json_matcher *m, const ds_json_vocab *v, int32_t eos_id, uint8_t *allowed, int n);

/* ---- engine: continuous batching of many sequences ---------------------- */
/* The engine owns a pool of contexts (slots).  Requests are submitted from
 * any thread; one thread drives ds_engine_step(), which admits waiting
 * requests, runs one batched step (every decoding sequence contributes one
 * token, prefilling sequences a chunk of their prompt within the token
 * budget, so long prompts never stall running streams), samples, and
 * reports every new token through the request's callback (on the stepping
 * thread).  A finished sequence keeps its KV in its slot: a later request
 * sharing a prefix with it reuses the cached positions. */
typedef struct ds_engine ds_engine;

typedef struct ds_engine_params {
    int max_seqs;            /* concurrent sequences (slots), default 4 */
    int ctx_size;            /* KV positions per slot, default 4096 capped by the model */
    ds_kv_type kv_type;
    int max_step_tokens;     /* token budget of one step, default 512 */
    int prefill_chunk;       /* prompt tokens of one sequence per step, default 256 */
    int prefix_reuse;        /* reuse cached prefixes (default 1) */
    ds_precision precision;  /* of every slot's context (default DS_PRECISION_F32) */
} ds_engine_params;
void ds_engine_params_init(ds_engine_params *p);

typedef enum ds_finish_reason {
    DS_FINISH_NONE = 0,      /* still running */
    DS_FINISH_STOP,          /* EOS or a stop token */
    DS_FINISH_LENGTH,        /* max_tokens or the context size */
    DS_FINISH_CANCELLED,     /* ds_engine_cancel or the callback asked to stop */
    DS_FINISH_ERROR
} ds_finish_reason;

/* Called for every generated token (token >= 0, logits of the position that
 * produced it, valid only during the call), and once more when the request
 * ends (token -1, reason != DS_FINISH_NONE).  Return non-zero to cancel. */
typedef int (*ds_token_fn)(void *user, uint64_t id, int32_t token, const float *logits,
                           ds_finish_reason reason);

typedef struct ds_request {
    const int32_t *prompt;   /* copied by ds_engine_submit */
    int n_prompt;
    int max_tokens;          /* 0 = until the context is full */
    ds_sampler_params sampling;
    const int32_t *stop_ids; /* extra stop tokens (copied) */
    int n_stop_ids;
    int ignore_eos;
    int sample_vocab;        /* sample only ids below this (0 = the model's vocabulary);
                                pass the tokenizer's size: checkpoints pad their vocabulary */
    /* Constrain the output to JSON matching json_schema (NULL = off) with the
     * token table json_vocab; both must outlive the request.  EOS is allowed
     * only once the value is complete and ends the request then (also with
     * ignore_eos); a value that cannot continue ends it at once (finish STOP,
     * without an EOS token).  max_tokens may cut the JSON short (LENGTH).
     * The callback's logits stay the unconstrained ones. */
    const ds_json_schema *json_schema;
    const ds_json_vocab *json_vocab;
    ds_token_fn on_token;
    void *user;
} ds_request;

typedef struct ds_engine_stats {
    uint64_t submitted, finished, cancelled;
    uint64_t prompt_tokens, generated_tokens, reused_prompt_tokens;
    uint64_t steps;
    int active, waiting, slots;
    int kv_used;             /* positions held by active sequences */
    int kv_capacity;
} ds_engine_stats;

ds_status ds_engine_create(ds_model *m, const ds_engine_params *p, ds_engine **out, ds_error *err);
/* Requests still queued or running get their final callback
 * (DS_FINISH_CANCELLED) before the engine is freed. */
void ds_engine_free(ds_engine *e);
/* Queues a request; *id identifies it in callbacks and ds_engine_cancel. */
ds_status ds_engine_submit(ds_engine *e, const ds_request *r, uint64_t *id, ds_error *err);
/* Cancels a queued or running request (its callback gets DS_FINISH_CANCELLED
 * at the next step).  Thread-safe. */
void ds_engine_cancel(ds_engine *e, uint64_t id);
/* One scheduling step; returns the number of requests still queued or
 * running (0 = idle), or -1 on an internal error (message in err). */
int ds_engine_step(ds_engine *e, ds_error *err);
void ds_engine_get_stats(ds_engine *e, ds_engine_stats *s);

/* ---- tokenizer ---------------------------------------------------------- */
/* Byte-level BPE tokenizer read from a Hugging Face tokenizer.json.
 * A tokenizer is immutable after loading; one may be shared by threads. */
typedef struct ds_tokenizer ds_tokenizer;

/* path_or_dir is a tokenizer.json file or a directory holding one.  A
 * tokenizer_config.json beside it, when present, names the BOS/EOS tokens
 * and carries the chat template. */
ds_status ds_tokenizer_load(const char *path_or_dir, ds_tokenizer **out, ds_error *err);
void ds_tokenizer_free(ds_tokenizer *t);
/* One past the largest token id (vocabulary plus added tokens). */
int ds_tokenizer_vocab_size(const ds_tokenizer *t);
/* Encodes len bytes of UTF-8 text (NUL bytes allowed); no BOS is added.
 * parse_special = 0 treats the text of special tokens as plain text (the
 * non-special added tokens such as <｜User｜> are still recognised); < 0
 * recognises no added token at all (text a user wrote).
 * *ids is malloc'ed (free() it); invalid UTF-8 gives DS_ERR_INPUT. */
ds_status ds_tokenizer_encode(const ds_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **ids, int *n, ds_error *err);
/* Decodes ids into a malloc'ed, NUL-terminated UTF-8 string (invalid byte
 * sequences become U+FFFD); skip_special drops special tokens.  An id that
 * names no token gives DS_ERR_INPUT. */
ds_status ds_tokenizer_decode(const ds_tokenizer *t, const int32_t *ids, int n, int skip_special,
                              char **text, size_t *len, ds_error *err);
/* Id of a token given in its tokenizer.json spelling ("Ġhello", "<｜User｜>"); -1 if none. */
int32_t ds_tokenizer_token_id(const ds_tokenizer *t, const char *token);
/* tokenizer.json spelling of a token; NULL for an unknown id. */
const char *ds_tokenizer_token_str(const ds_tokenizer *t, int32_t id);
/* The raw bytes a token decodes to (not NUL-terminated); NULL for an unknown id. */
const char *ds_tokenizer_token_bytes(const ds_tokenizer *t, int32_t id, size_t *len);
int ds_tokenizer_is_special(const ds_tokenizer *t, int32_t id);
/* From tokenizer_config.json; -1 / NULL when not known. */
int32_t ds_tokenizer_bos_id(const ds_tokenizer *t);
int32_t ds_tokenizer_eos_id(const ds_tokenizer *t);
const char *ds_tokenizer_chat_template(const ds_tokenizer *t);

/* Streaming detokenizer: push ids one at a time as they are generated and
 * get back only complete UTF-8 characters; an incomplete multi-byte tail
 * is held until the next push.  *out is malloc'ed and NUL-terminated
 * (free() it), possibly empty.  The tokenizer must outlive the detok. */
typedef struct ds_detok ds_detok;
ds_detok *ds_detok_create(const ds_tokenizer *t, int skip_special);
ds_status ds_detok_push(ds_detok *d, int32_t id, char **out, size_t *len, ds_error *err);
/* Emits the held-back tail (as U+FFFD, since it is incomplete) and resets. */
ds_status ds_detok_flush(ds_detok *d, char **out, size_t *len, ds_error *err);
void ds_detok_free(ds_detok *d);
/* Chat encoding: renders a conversation into the prompt text the model was
 * trained on, and parses a generated completion back into a message.
 *
 * DS_CHAT_V32 is DeepSeek-V3.2's encoding (DSML tool calls, thinking and
 * chat modes); DS_CHAT_V3 is the V3/V3.1 chat template of tokenizer_config.json
 * (legacy tool-call tokens).  DS_CHAT_AUTO is resolved by the caller from the
 * model with ds_chat_format_for_model(); passed to ds_chat_render it means V3.2. */
typedef enum ds_chat_format { DS_CHAT_AUTO = 0, DS_CHAT_V3, DS_CHAT_V32 } ds_chat_format;

/* "deepseek_v32" -> DS_CHAT_V32; any other model type -> DS_CHAT_V3;
 * NULL (no model) -> DS_CHAT_V32. */
ds_chat_format ds_chat_format_for_model(const char *model_type);
const char *ds_chat_format_name(ds_chat_format f);   /* "auto", "v3", "v3.2" */

typedef struct ds_chat_options {
    int thinking;              /* 1 = thinking mode: the prompt ends with <think> (default 0) */
    int drop_thinking;         /* V3.2: the reference's dropping of earlier reasoning (default 1) */
    int add_bos;               /* start with <｜begin▁of▁sentence｜> (default 1) */
    int add_generation_prompt; /* V3: end with <｜Assistant｜> (default 1); V3.2 user
                                * turns always open the assistant turn */
} ds_chat_options;
void ds_chat_options_init(ds_chat_options *o);

/* conversation_json (len bytes, UTF-8) is either an array of OpenAI-style
 * messages ({"role": system|user|assistant|developer|tool, "content",
 * "reasoning_content", "tool_calls", "tools", "response_format"}) or an
 * object {"messages": [...], "tools": [...], "response_format": {...}}.
 * The object's tools and response_format are attached to the first system
 * message (replacing any it carries); when there is none, a system message
 * with empty content is inserted first to carry them.  V3 ignores tools and
 * response_format (its template has no place for them).  opt may be NULL
 * (defaults).  *prompt is malloc'ed and NUL-terminated; free() it. */
ds_status ds_chat_render(ds_chat_format fmt, const char *conversation_json, size_t len,
                         const ds_chat_options *opt, char **prompt, size_t *prompt_len,
                         ds_error *err);
/* Whether a token's text is one of the markers the completion parser reads
 * (BOS / EOS, the User / Assistant turns, <think> / </think>, the V3 tool-
 * call tokens, DSML); a chat answer keeps these special tokens for the
 * parser and drops every other one (placeholders have no text to show). */
int ds_chat_is_marker(const char *text, size_t len);
/* Renders as ds_chat_render and encodes the prompt with t: the template's
 * markers as their tokens, the messages' text as plain text even where it
 * spells a special or added token, so a message cannot forge a turn or an
 * end of sentence.  Where no message spells one, the ids are those of
 * encoding the whole prompt.  *ids is malloc'ed; prompt may be NULL (else
 * *prompt is the rendered text, malloc'ed). */
ds_status ds_chat_encode(const ds_tokenizer *t, ds_chat_format fmt, const char *conversation_json, size_t len,
                         const ds_chat_options *opt, int32_t **ids, int *n, char **prompt, size_t *prompt_len,
                         ds_error *err);

/* Parses a V3.2 completion (the generated text after the prompt) into an
 * OpenAI assistant message as JSON in json.dumps style (free() it):
 * {"role": "assistant", "content": "...", "reasoning_content": "..." (thinking
 * mode only), "tool_calls": [{"type": "function", "function": {"name": ...,
 * "arguments": "<JSON object as a string>"}}] (only when there are calls)}.
 * In thinking mode the reasoning runs to </think> (all of the text when it
 * never comes); the content runs to <｜end▁of▁sentence｜>, with well-formed
 * "\n\n<｜DSML｜function_calls>" blocks taken out as tool calls.  A truncated
 * or malformed block stays in the content as plain text.  Text after the
 * end-of-sentence token is ignored. */
ds_status ds_chat_parse_completion(const char *text, size_t len, int thinking,
                                   char **message_json, ds_error *err);
/* The same for a completion in format fmt: DS_CHAT_V3 takes the legacy
 * tool-call tokens out instead of DSML, in both their V3 form
 * (<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
 * "\n```json\n" ARGS "\n```"<｜tool▁call▁end｜> ... <｜tool▁calls▁end｜>) and
 * their V3.1 form (<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>),
 * ARGS being a JSON object; DS_CHAT_V32 and DS_CHAT_AUTO parse DSML. */
ds_status ds_chat_parse_completion_for(ds_chat_format fmt, const char *text, size_t len,
                                       int thinking, char **message_json, ds_error *err);

/* Incremental form of ds_chat_parse_completion for streaming: push the
 * generated bytes as they come (any split, even inside a UTF-8 character or
 * a marker) and get events; bytes that may begin a marker ("</think>",
 * "<｜DSML｜...", the end-of-sentence token) or end inside a UTF-8 character
 * are held back until decided.  The concatenated deltas and the tool calls
 * equal what the one-shot parse returns, whatever the chunking.  A tool call
 * is reported once its whole function_calls block has been parsed. */
typedef enum ds_chat_event_kind {
    DS_CHAT_EV_REASONING = 1,  /* text: a piece of reasoning_content */
    DS_CHAT_EV_CONTENT,        /* text: a piece of content */
    DS_CHAT_EV_TOOL_CALL       /* name, arguments (JSON object text) of one call */
} ds_chat_event_kind;
typedef struct ds_chat_event {
    ds_chat_event_kind kind;
    const char *text;          /* NUL-terminated; len bytes */
    size_t len;
    const char *name, *arguments;
} ds_chat_event;
typedef struct ds_chat_stream ds_chat_stream;
ds_chat_stream *ds_chat_stream_create(int thinking);   /* NULL when out of memory */
/* A stream for completions in format fmt (as ds_chat_parse_completion_for;
 * ds_chat_stream_create is the V3.2 one). */
ds_chat_stream *ds_chat_stream_create_for(ds_chat_format fmt, int thinking);
/* The events (and their strings) belong to the stream and stay valid until
 * the next push, finish or free. */
ds_status ds_chat_stream_push(ds_chat_stream *s, const char *bytes, size_t len,
                              const ds_chat_event **events, size_t *n_events, ds_error *err);
/* End of the completion: releases everything held back. */
ds_status ds_chat_stream_finish(ds_chat_stream *s, const ds_chat_event **events,
                                size_t *n_events, ds_error *err);
/* Non-zero once the end-of-sentence token has been seen (later bytes are ignored). */
int ds_chat_stream_stopped(const ds_chat_stream *s);
void ds_chat_stream_free(ds_chat_stream *s);
/* ---- end tokenizer ------------------------------------------------------ */

#ifdef __cplusplus
}
#endif
#endif
