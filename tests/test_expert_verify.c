/* test_expert_verify.c — expert slab checksums (DSINFER_VERIFY_SLABS=1) on a
 * copy of the tiny-dsa checkpoint streamed through a two-slab expert cache:
 * with verification on, decoding gives logits bit-identical to the resident
 * run (checks never alter data); after the checkpoint's bytes change on disk
 * under the running model, the next re-read of an expert fails with an I/O
 * error that names the checksum instead of computing with changed weights. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "dsinfer.h"

#define STEPS 40

static int failures;
#define CHECK(c, ...) do { if (!(c)) { failures++; printf("FAIL: " __VA_ARGS__); printf("\n"); } } while (0)

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* Flips one byte in every 4 KiB of the tensor data of a safetensors file
 * (past its JSON header), so every expert's bytes change. */
static int corrupt_data(const char *path)
{
    int fd = open(path, O_RDWR);
    uint64_t hlen = 0;
    if (fd < 0 || pread(fd, &hlen, 8, 0) != 8)
        return -1;
    off_t end = lseek(fd, 0, SEEK_END);
    for (off_t o = (off_t)(8 + hlen) + 100; o < end; o += 4096) {
        unsigned char b;
        if (pread(fd, &b, 1, o) != 1)
            return -1;
        b ^= 0x5a;
        if (pwrite(fd, &b, 1, o) != 1)
            return -1;
    }
    return close(fd);
}

/* Greedy decode of STEPS tokens after a short prompt; returns the status of
 * the first failing step (logits of the last step in last). */
static ds_status decode(ds_model *m, float *last, int *steps_done, ds_error *err,
                        const char *corrupt_dir, int corrupt_at)
{
    ds_context_params cp;
    ds_context_params_init(&cp);
    cp.kv_type = DS_KV_F32;
    cp.ctx_size = 64;
    cp.threads = 1;
    ds_context *ctx;
    ds_status st = ds_context_create(m, &cp, &ctx, err);
    if (st != DS_OK)
        return st;
    const int V = ds_model_get_info(m)->vocab_size;
    int32_t tok[4] = {0, 831, 89, 424};
    st = ds_eval(ctx, tok, 4, last, 0, err);
    *steps_done = 0;
    for (int i = 0; i < STEPS && st == DS_OK; i++) {
        if (corrupt_dir && i == corrupt_at) {
            char p[4096];
            for (int f = 1; f <= 2; f++) {
                snprintf(p, sizeof p, "%s/model-0000%d-of-00002.safetensors", corrupt_dir, f);
                CHECK(corrupt_data(p) == 0, "corrupt %s", p);
            }
        }
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (last[v] > last[best])
                best = v;
        st = ds_eval(ctx, &best, 1, last, 0, err);
        if (st == DS_OK)
            (*steps_done)++;
    }
    ds_context_free(ctx);
    return st;
}

static ds_model *load(const char *dir, int64_t budget)
{
    ds_load_params lp;
    ds_load_params_init(&lp);
    lp.expert_budget = budget;
    lp.threads = 1;
    ds_model *m = NULL;
    ds_error err;
    if (ds_model_load(dir, &lp, &m, &err) != DS_OK)
        printf("load %s: %s\n", dir, err.msg);
    return m;
}

int main(void)
{
    const char *top = getenv("top_srcdir");
    char src[4096], dir[] = "/tmp/dsinfer-verify-XXXXXX";
    snprintf(src, sizeof src, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp\n");
        return 1;
    }
    static const char *files[] = {"config.json", "model.safetensors.index.json",
                                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (int i = 0; i < 4; i++) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        if (copy_file(a, b) != 0) {
            printf("FAIL: copy %s\n", a);
            return 1;
        }
    }
    setenv("DSINFER_VERIFY_SLABS", "1", 1);
    ds_error err;
    ds_model *res = load(dir, 0), *str = load(dir, 400 * 1024);
    if (!res || !str)
        return 1;
    const int V = ds_model_get_info(res)->vocab_size;
    float *a = malloc(sizeof(float) * (size_t)V), *b = malloc(sizeof(float) * (size_t)V);
    int na, nb;
    CHECK(decode(res, a, &na, &err, NULL, 0) == DS_OK, "resident decode: %s", err.msg);
    CHECK(decode(str, b, &nb, &err, NULL, 0) == DS_OK, "verified streaming decode: %s", err.msg);
    CHECK(na == STEPS && nb == STEPS && memcmp(a, b, sizeof(float) * (size_t)V) == 0,
          "verified streaming changes the logits");
    ds_expert_stats es;
    ds_model_expert_stats(str, &es);
    CHECK(es.streaming && es.misses > (uint64_t)es.slots, "the run must re-read evicted experts (misses %llu)",
          (unsigned long long)es.misses);

    /* the checkpoint changes under the running model: a re-read must fail */
    ds_status st = decode(str, b, &nb, &err, dir, 5);
    CHECK(st == DS_ERR_IO && strstr(err.msg, "checksum"),
          "a changed expert was used without error (status %d after %d steps: %s)", (int)st, nb,
          st == DS_OK ? "" : err.msg);
    if (st != DS_OK)
        printf("after the change, step %d: %s\n", nb, err.msg);

    ds_model_free(res);
    ds_model_free(str);
    free(a);
    free(b);
    for (int i = 0; i < 4; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    if (failures)
        return 1;
    printf("PASS: checked slabs keep results identical; a changed checkpoint is caught on re-read\n");
    return 0;
}
