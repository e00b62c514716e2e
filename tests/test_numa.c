/* test_numa.c — the NUMA placement plan on hwloc synthetic and XML
 * topologies (this machine has one node): threads split across nodes in
 * proportion to their cores and laid on distinct cores, experts partitioned
 * into balanced contiguous ranges, nothing bound on a synthetic topology;
 * and a model loaded under a 2-node synthetic topology computes the same
 * logits with expert slabs streamed through node-preferring slots, and with
 * the dense weights replicated per node (--numa replicate); a replicated
 * matrix is read from the copy of each thread's node. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hwloc.h>
#include <omp.h>
#include "kernels.h"
#include "numa.h"

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf("\n"); } } while (0)

static ds_numa *make(const char *synthetic, int threads)
{
    setenv("HWLOC_SYNTHETIC", synthetic, 1);
    ds_numa *n = NULL;
    ds_error err;
    if (ds_numa_create(threads, &n, &err) != DS_OK)
        printf("numa: %s\n", err.msg);
    unsetenv("HWLOC_SYNTHETIC");
    return n;
}

static void test_two_sockets(void)
{
    ds_numa *n = make("pack:2 numa:1 core:8 pu:2", 0);
    if (!n) {
        CHECK(0, "no topology");
        return;
    }
    CHECK(ds_numa_nodes(n) == 2 && ds_numa_cores(n) == 16 && ds_numa_threads(n) == 16, "2 x 8 cores");
    CHECK(!ds_numa_is_real(n), "a synthetic topology is not this machine");
    int seen[16] = {0};
    for (int t = 0; t < 16; t++) {
        CHECK(ds_numa_thread_node(n, t) == t / 8, "thread %d on node %d", t, ds_numa_thread_node(n, t));
        int c = ds_numa_thread_core(n, t);
        CHECK(c >= 0 && c < 16 && !seen[c], "thread %d core %d", t, c);
        if (c >= 0 && c < 16)
            seen[c] = 1;
        CHECK(c / 8 == ds_numa_thread_node(n, t), "core %d belongs to the thread's node", c);
    }
    for (int e = 0; e < 256; e++)
        CHECK(ds_numa_expert_node(n, e, 256) == (e < 128 ? 0 : 1), "expert %d", e);
    char buf[64];
    CHECK(ds_numa_bind(n, buf, sizeof buf, 1) == 0, "no binding on a synthetic topology");
    CHECK(ds_numa_pin_team(n) == 0, "no pinning on a synthetic topology");
    ds_numa_free(n);

    n = make("pack:2 numa:1 core:8 pu:1", 3);      /* fewer threads than cores */
    CHECK(n && ds_numa_node_threads(n, 0) == 1 && ds_numa_node_threads(n, 1) == 2, "3 threads split 1 + 2");
    CHECK(n && ds_numa_thread_node(n, 0) == 0 && ds_numa_thread_node(n, 2) == 1, "thread nodes");
    ds_numa_free(n);
    n = make("pack:2 numa:1 core:2 pu:1", 6);      /* more threads than cores wrap on the node's cores */
    CHECK(n && ds_numa_node_threads(n, 0) == 3 && ds_numa_thread_core(n, 2) == ds_numa_thread_core(n, 0),
          "oversubscribed threads wrap");
    ds_numa_free(n);
}

static void test_four_nodes_uneven(void)
{
    ds_numa *n = make("pack:1 numa:4 core:4 pu:1", 16);
    if (!n) {
        CHECK(0, "no topology");
        return;
    }
    CHECK(ds_numa_nodes(n) == 4, "4 nodes");
    int count[4] = {0};
    for (int e = 0; e < 10; e++)
        count[ds_numa_expert_node(n, e, 10)]++;
    for (int k = 0; k < 4; k++)
        CHECK(count[k] == 2 || count[k] == 3, "10 experts over 4 nodes: node %d has %d", k, count[k]);
    CHECK(ds_numa_expert_node(n, 9, 10) == 3 && ds_numa_expert_node(n, 0, 10) == 0, "ranges are contiguous");
    ds_numa_free(n);
}

static void test_xml_topology(void)
{
    /* the same plan from an XML topology file */
    char path[] = "/tmp/dsinfer-numa-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        CHECK(0, "mkstemp");
        return;
    }
    close(fd);
    /* export a 2-package synthetic machine to XML with hwloc itself */
    hwloc_topology_t topo;
    hwloc_topology_init(&topo);
    hwloc_topology_set_synthetic(topo, "pack:2 numa:1 core:2 pu:1");
    hwloc_topology_load(topo);
    int ex = hwloc_topology_export_xml(topo, path, 0);
    hwloc_topology_destroy(topo);
    if (ex != 0) {
        CHECK(0, "hwloc cannot export XML");
        unlink(path);
        return;
    }
    setenv("HWLOC_XMLFILE", path, 1);
    ds_numa *n = NULL;
    ds_error err;
    ds_status st = ds_numa_create(4, &n, &err);
    unsetenv("HWLOC_XMLFILE");
    unlink(path);
    CHECK(st == DS_OK, "xml topology: %s", st == DS_OK ? "" : err.msg);
    if (!n)
        return;
    CHECK(ds_numa_nodes(n) == 2 && ds_numa_cores(n) == 4, "xml: %d nodes %d cores", ds_numa_nodes(n),
          ds_numa_cores(n));
    CHECK(ds_numa_thread_node(n, 1) == 0 && ds_numa_thread_node(n, 2) == 1, "xml thread nodes");
    ds_numa_free(n);
}

static void test_model_on_two_nodes(void)
{
    const char *top = getenv("top_srcdir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/data/tiny-dsa/model", top ? top : ".");
    int32_t toks[12] = {0, 831, 89, 185, 244, 187, 820, 890, 596, 42, 98, 341};
    float *ref = malloc(sizeof(float) * 1024), *got = malloc(sizeof(float) * 1024);
    for (int pass = 0; pass < 3; pass++) {
        if (pass)
            setenv("HWLOC_SYNTHETIC", "pack:2 numa:1 core:2 pu:1", 1);
        ds_load_params lp;
        ds_load_params_init(&lp);
        lp.expert_budget = pass == 1 ? 1 << 20 : 0;
        lp.numa = pass == 2 ? DS_NUMA_REPLICATE : DS_NUMA_ON;
        ds_model *m;
        ds_error err;
        ds_status st = ds_model_load(dir, &lp, &m, &err);
        unsetenv("HWLOC_SYNTHETIC");
        if (st != DS_OK) {
            CHECK(0, "load: %s", err.msg);
            break;
        }
        CHECK(ds_model_get_info(m)->numa_nodes == (pass ? 2 : 1), "model plan has %d nodes",
              ds_model_get_info(m)->numa_nodes);
        CHECK(ds_model_get_info(m)->numa_replicas == (pass == 2 ? 2 : 1), "pass %d: %d copies of the dense weights",
              pass, ds_model_get_info(m)->numa_replicas);
        CHECK((ds_model_get_info(m)->replica_bytes > 0) == (pass == 2), "replica bytes");
        ds_context_params cp;
        ds_context_params_init(&cp);
        cp.kv_type = DS_KV_F32;
        cp.ctx_size = 16;
        ds_context *c;
        ds_context_create(m, &cp, &c, &err);
        CHECK(ds_eval(c, toks, 12, pass ? got : ref, 0, &err) == DS_OK, "eval: %s", err.msg);
        ds_context_free(c);
        ds_model_free(m);
        if (pass)
            CHECK(memcmp(ref, got, sizeof(float) * 1024) == 0, "pass %d: logits change under the 2-node plan", pass);
    }
    free(ref);
    free(got);
}

/* A replicated matrix is read from the copy of the calling thread's node:
 * copy k holds the weights times (k + 1), so every output row tells which
 * copy its thread read. */
static void test_replica_dispatch(void)
{
    enum { R = 96, C = 1024 };
    float *w = malloc(sizeof(float) * R * C * 3), *x = malloc(sizeof(float) * C), y[R], ref[R];
    for (int i = 0; i < R * C; i++)
        w[i] = (float)((i * 7919) % 13) - 6.0f;
    for (int k = 1; k <= 2; k++)
        for (int i = 0; i < R * C; i++)
            w[(size_t)k * R * C + i] = w[i] * (float)(k + 1);
    for (int i = 0; i < C; i++)
        x[i] = (float)(i % 5) - 2.0f;
    ds_mat copies[2], m = {DS_DT_F32, R, C, w, NULL, NULL, 0};
    for (int k = 0; k < 2; k++)
        copies[k] = (ds_mat){DS_DT_F32, R, C, w + (size_t)(k + 1) * R * C, NULL, NULL, 0};
    ds_gemv(&m, 0, R, x, ref);                       /* the original: factor 1 */
    ds_mat rm = m;
    rm.copies = copies, rm.n_copies = 2;
    ds_kernels_set_node(1);
    ds_gemv(&rm, 0, 4, x, y);                        /* too small to split: this thread's copy */
    CHECK(y[0] == 3.0f * ref[0] && y[3] == 3.0f * ref[3], "node 1 reads copy 1 (%g vs %g)", y[0], 3 * ref[0]);
    ds_kernels_set_node(0);
    ds_gemv(&rm, 0, 4, x, y);
    CHECK(y[0] == 2.0f * ref[0], "node 0 reads copy 0");
    /* Split across a team whose thread t sits on node t: rows go in blocks
     * of 16, the first half to thread 0. */
    omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
    ds_kernels_set_node(omp_get_thread_num());
    ds_gemv(&rm, 0, R, x, y);
    int good = 1;
    for (int i = 0; i < R; i++)
        good &= y[i] == (i < 48 ? 2.0f : 3.0f) * ref[i];
    CHECK(omp_get_max_threads() < 2 || good, "a split product reads each thread's node copy");
    float Y[3 * R];
    float X3[3 * C];
    for (int t = 0; t < 3; t++)
        memcpy(X3 + (size_t)t * C, x, sizeof(float) * C);
    ds_gemm(&rm, 0, R, X3, C, 3, Y, R);
    good = 1;
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < R; i++)
            good &= Y[t * R + i] == (i < 48 ? 2.0f : 3.0f) * ref[i];
    CHECK(omp_get_max_threads() < 2 || good, "a split GEMM reads each thread's node copy");
#pragma omp parallel num_threads(2)
    ds_kernels_set_node(0);
    free(w);
    free(x);
}

int main(void)
{
    test_replica_dispatch();
    test_two_sockets();
    test_four_nodes_uneven();
    test_xml_topology();
    test_model_on_two_nodes();
    printf(failures ? "%d checks failed\n" : "all NUMA checks passed\n", failures);
    return failures != 0;
}
