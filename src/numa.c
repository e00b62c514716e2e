/* numa.c — hwloc topology discovery and the thread / expert / memory
 * placement plan (see numa.h). */
#include <hwloc.h>
#include <omp.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "internal.h"
#include "kernels.h"
#include "numa.h"

struct ds_numa {
    hwloc_topology_t topo;
    int real;
    int nodes, cores, threads;
    int *thread_core, *thread_node, *node_threads;
};

/* Cores of a node in logical order; NULL-terminated count in *n. */
static int cores_of_node(hwloc_topology_t topo, hwloc_obj_t node, int *out, int max)
{
    int n = 0;
    int nc = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    for (int c = 0; c < nc && n < max; c++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, (unsigned)c);
        if (core && hwloc_bitmap_intersects(core->nodeset, node->nodeset))
            out[n++] = c;
    }
    return n;
}

/* Threads are split across nodes in proportion to their cores, every node
 * getting at least one while there are threads to give, then laid on the
 * node's cores in order (wrapping when there are more threads than cores). */
static ds_status plan_threads(ds_numa *n, ds_error *err)
{
    int *node_cores = ds_calloc((size_t)n->nodes, sizeof(int), err);
    int *list = ds_calloc((size_t)n->cores + 1, sizeof(int), err);
    n->thread_core = ds_calloc((size_t)n->threads, sizeof(int), err);
    n->thread_node = ds_calloc((size_t)n->threads, sizeof(int), err);
    n->node_threads = ds_calloc((size_t)n->nodes, sizeof(int), err);
    if (!node_cores || !list || !n->thread_core || !n->thread_node || !n->node_threads) {
        free(node_cores);
        free(list);
        return DS_ERR_NOMEM;
    }
    for (int k = 0; k < n->nodes; k++)
        node_cores[k] = cores_of_node(n->topo, hwloc_get_obj_by_type(n->topo, HWLOC_OBJ_NUMANODE, (unsigned)k),
                                      list, n->cores);
    for (int k = 0, given = 0; k < n->nodes; k++) {
        int share = (int)((long)n->threads * (k + 1) / n->nodes) - (int)((long)n->threads * k / n->nodes);
        n->node_threads[k] = share;
        given += share;
    }
    int t = 0;
    for (int k = 0; k < n->nodes; k++) {
        int nc = cores_of_node(n->topo, hwloc_get_obj_by_type(n->topo, HWLOC_OBJ_NUMANODE, (unsigned)k), list,
                               n->cores);
        for (int i = 0; i < n->node_threads[k]; i++, t++) {
            n->thread_node[t] = k;
            n->thread_core[t] = nc ? list[i % nc] : 0;
        }
    }
    free(node_cores);
    free(list);
    return DS_OK;
}

ds_status ds_numa_create(int threads, ds_numa **out, ds_error *err)
{
    ds_numa *n = ds_calloc(1, sizeof *n, err);
    if (!n)
        return DS_ERR_NOMEM;
    if (hwloc_topology_init(&n->topo) != 0 || hwloc_topology_load(n->topo) != 0) {
        free(n);
        return ds_fail(err, DS_ERR_UNSUPPORTED, "hwloc cannot load the machine topology (check HWLOC_SYNTHETIC / HWLOC_XMLFILE)");
    }
    n->real = hwloc_topology_is_thissystem(n->topo);
    n->nodes = hwloc_get_nbobjs_by_type(n->topo, HWLOC_OBJ_NUMANODE);
    n->cores = hwloc_get_nbobjs_by_type(n->topo, HWLOC_OBJ_CORE);
    if (n->nodes < 1)
        n->nodes = 1;
    if (n->cores < 1)
        n->cores = 1;
    n->threads = threads > 0 ? threads : n->cores;
    ds_status st = plan_threads(n, err);
    if (st != DS_OK) {
        ds_numa_free(n);
        return st;
    }
    *out = n;
    return DS_OK;
}

void ds_numa_free(ds_numa *n)
{
    if (!n)
        return;
    hwloc_topology_destroy(n->topo);
    free(n->thread_core);
    free(n->thread_node);
    free(n->node_threads);
    free(n);
}

int ds_numa_nodes(const ds_numa *n) { return n->nodes; }
int ds_numa_cores(const ds_numa *n) { return n->cores; }
int ds_numa_threads(const ds_numa *n) { return n->threads; }
int ds_numa_is_real(const ds_numa *n) { return n->real; }
int ds_numa_thread_node(const ds_numa *n, int t) { return t >= 0 && t < n->threads ? n->thread_node[t] : -1; }
int ds_numa_thread_core(const ds_numa *n, int t) { return t >= 0 && t < n->threads ? n->thread_core[t] : -1; }
int ds_numa_node_threads(const ds_numa *n, int node) { return node >= 0 && node < n->nodes ? n->node_threads[node] : 0; }

int ds_numa_expert_node(const ds_numa *n, int expert, int n_experts)
{
    if (n_experts <= 0 || expert < 0 || expert >= n_experts)
        return 0;
    return (int)((long)expert * n->nodes / n_experts);
}

int ds_numa_pin_team(ds_numa *n)
{
    int bound = 0;
#pragma omp parallel reduction(+ : bound)
    {
        int t = omp_get_thread_num();
        ds_kernels_set_node(t < n->threads ? n->thread_node[t] : 0);
        if (n->real && t < n->threads) {
            hwloc_obj_t core = hwloc_get_obj_by_type(n->topo, HWLOC_OBJ_CORE, (unsigned)n->thread_core[t]);
            if (core && hwloc_set_cpubind(n->topo, core->cpuset, HWLOC_CPUBIND_THREAD) == 0)
                bound++;
        }
    }
    return bound;
}

int ds_numa_bind(ds_numa *n, void *p, size_t len, int node)
{
    if (!n->real || n->nodes < 2 || node < 0 || node >= n->nodes || !p || !len)
        return 0;
    hwloc_obj_t obj = hwloc_get_obj_by_type(n->topo, HWLOC_OBJ_NUMANODE, (unsigned)node);
    if (!obj)
        return 0;
    /* MIGRATE: pages already touched (a RAM copy of the checkpoint) move too */
    return hwloc_set_area_membind(n->topo, p, len, obj->nodeset, HWLOC_MEMBIND_BIND,
                                  HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_MIGRATE) == 0;
}

/* Anonymous mappings: pages are untouched until the copy, so a bind before
 * it decides where they land (no migration). */
void *ds_numa_alloc(ds_numa *n, size_t len, int node)
{
    if (!len)
        return NULL;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    ds_numa_bind(n, p, len, node);
    return p;
}

void ds_numa_free_mem(ds_numa *n, void *p, size_t len)
{
    (void)n;
    if (p && len)
        munmap(p, len);
}
