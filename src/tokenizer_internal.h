/* tokenizer_internal.h — data structures of the byte-level BPE tokenizer
 * (src/tokenizer.c): hash maps, the added-token trie, the pre-tokenizer
 * steps and the ds_tokenizer object itself.  Private to the library. */
#ifndef DS_TOKENIZER_INTERNAL_H
#define DS_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>
#include "internal.h"

/* Open-addressing map from a byte string to an int32.  Keys are copied
 * into a pool the map owns; a slot with hash 0 is empty (hashes are forced
 * non-zero). */
typedef struct tk_bslot {
    uint64_t hash;
    uint32_t off, len;
    int32_t val;
} tk_bslot;

typedef struct tk_bmap {
    tk_bslot *slots;
    size_t cap, count;          /* cap is a power of two */
    char *pool;
    size_t pool_len, pool_cap;
} tk_bmap;

/* Open-addressing map from a pair of token ids to its merge (rank and the
 * id of the merged token).  key == UINT64_MAX marks an empty slot. */
typedef struct tk_pslot {
    uint64_t key;
    int32_t rank, id;
} tk_pslot;

typedef struct tk_pmap {
    tk_pslot *slots;
    size_t cap, count;
} tk_pmap;

/* Byte trie over the added tokens' contents; children form a sibling list.
 * Node 0 is the root. */
typedef struct tk_tnode {
    int32_t child, sibling;
    int32_t added;              /* index into ds_tokenizer.added, -1 if none ends here */
    uint8_t byte;
} tk_tnode;

typedef struct tk_trie {
    tk_tnode *nodes;
    size_t n, cap;
    uint8_t first[256];         /* 1 if some token starts with this byte: a fast reject */
} tk_trie;

typedef struct tk_added {
    int32_t id;
    uint32_t off, len;          /* content in ds_tokenizer.text */
    uint8_t special, single_word, lstrip, rstrip, normalized;
} tk_added;

enum tk_step_kind { TK_SPLIT, TK_BYTELEVEL };
enum tk_behavior { TK_REMOVED, TK_ISOLATED, TK_MERGED_PREV, TK_MERGED_NEXT, TK_CONTIGUOUS };

typedef struct tk_step {
    int kind;
    pcre2_code *re;             /* Split pattern, or the GPT-2 regex for ByteLevel use_regex */
    int behavior, invert;
    int add_prefix_space;       /* ByteLevel */
} tk_step;

#define TK_MAX_STEPS 16

enum { TK_PRESENT = 1, TK_ADDED = 2, TK_SPECIAL = 4 };

struct ds_tokenizer {
    int n_ids;                  /* one past the largest id */
    uint8_t *flags;             /* per id: TK_* */
    uint32_t *str_off, *bytes_off, *bytes_len;   /* per id, into text */
    char *text;                 /* NUL-terminated spellings and decoded bytes */
    size_t text_len, text_cap;

    tk_bmap vocab;              /* spelling -> id (model vocab) */
    tk_bmap added_map;          /* content -> id (added tokens) */
    tk_pmap merges;
    int32_t n_ranks;            /* merge ranks are 0 .. n_ranks-1 */
    int32_t byte_id[256];       /* id of the single-byte token for each byte */
    uint32_t byte_cp[256];      /* GPT-2 byte -> code point map */
    int16_t cp_byte[512];       /* its inverse (-1 = not a mapped code point) */
    int ignore_merges;

    tk_added *added;
    int n_added;
    tk_trie trie_raw, trie_norm;   /* non-normalized / normalized added tokens */

    tk_step steps[TK_MAX_STEPS];
    int n_steps;

    int32_t bos_id, eos_id;
    char *chat_template;
};

#endif
