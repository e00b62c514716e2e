/* test_numa.c — the NUMA placement plan on hwloc synthetic and XML
 * topologies (this machine has one node): threads split across nodes in
 * proportion to their cores and laid on distinct cores, experts partitioned
 * into balanced contiguous ranges, nothing bound on a synthetic topology;
 * and a model loaded under a 2-node synthetic topology computes the same
 * logits with expert slabs streamed through node-preferring slots. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hwloc.h>
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
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            setenv("HWLOC_SYNTHETIC", "pack:2 numa:1 core:2 pu:1", 1);
        ds_load_params lp;
        ds_load_params_init(&lp);
        lp.expert_budget = pass ? 1 << 20 : 0;
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
        ds_context_params cp;
        ds_context_params_init(&cp);
        cp.kv_type = DS_KV_F32;
        cp.ctx_size = 16;
        ds_context *c;
        ds_context_create(m, &cp, &c, &err);
        CHECK(ds_eval(c, toks, 12, pass ? got : ref, 0, &err) == DS_OK, "eval: %s", err.msg);
        ds_context_free(c);
        ds_model_free(m);
    }
    CHECK(memcmp(ref, got, sizeof(float) * 1024) == 0, "logits change under the 2-node plan");
    free(ref);
    free(got);
}

int main(void)
{
    test_two_sockets();
    test_four_nodes_uneven();
    test_xml_topology();
    test_model_on_two_nodes();
    printf(failures ? "%d checks failed\n" : "all NUMA checks passed\n", failures);
    return failures != 0;
}
