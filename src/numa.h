/* numa.h — machine topology (hwloc) and the placement plan built on it:
 * which core each worker thread runs on, which NUMA node owns each routed
 * expert (experts are partitioned across nodes, not duplicated), and
 * memory binding of buffers to a node.  Works on hwloc synthetic / XML
 * topologies too (HWLOC_SYNTHETIC, HWLOC_XMLFILE), where the plan is made
 * but nothing is bound, so the logic is testable on a one-node machine. */
#ifndef DS_NUMA_H
#define DS_NUMA_H

#include <stddef.h>
#include "dsinfer.h"

typedef struct ds_numa ds_numa;

/* threads: worker threads to place (0 = one per core). */
ds_status ds_numa_create(int threads, ds_numa **out, ds_error *err);
void ds_numa_free(ds_numa *n);
int ds_numa_nodes(const ds_numa *n);
int ds_numa_cores(const ds_numa *n);
int ds_numa_threads(const ds_numa *n);
int ds_numa_is_real(const ds_numa *n);      /* the topology is this machine's */
/* Node of worker thread t, its core (logical index), and the threads of a node. */
int ds_numa_thread_node(const ds_numa *n, int t);
int ds_numa_thread_core(const ds_numa *n, int t);
int ds_numa_node_threads(const ds_numa *n, int node);
/* Node that owns expert e of a layer with n_experts experts: contiguous,
 * balanced ranges (node k gets experts [k E / N, (k+1) E / N)). */
int ds_numa_expert_node(const ds_numa *n, int expert, int n_experts);
/* Binds the calling OpenMP team's threads to their planned cores (a no-op
 * on a synthetic topology) and tells each thread its node, which picks the
 * matrix copies it reads (ds_kernels_set_node; synthetic topologies too);
 * returns how many threads were bound to cores. */
int ds_numa_pin_team(ds_numa *n);
/* Binds [p, p+len) to a node's memory (no-op on a synthetic topology or a
 * single node); failures are not errors: placement is an optimisation. */
int ds_numa_bind(ds_numa *n, void *p, size_t len, int node);
/* len bytes (page aligned, untouched) in a node's memory: bound on a real
 * multi-node machine, plain memory otherwise (synthetic topologies still
 * exercise the logic).  Free with ds_numa_free_mem.  NULL when out of memory. */
void *ds_numa_alloc(ds_numa *n, size_t len, int node);
void ds_numa_free_mem(ds_numa *n, void *p, size_t len);

#endif
