/* format.h — the one tensor table every checkpoint format is parsed into
 * (DESIGN decision 1): name -> dtype, shape, file, offset, bytes.  Nothing
 * downstream knows whether it came from safetensors or GGUF. */
#ifndef DS_FORMAT_H
#define DS_FORMAT_H

#include <stdint.h>
#include "dsinfer.h"
#include "../simd/dtype.h"

#define DS_MAX_DIMS 4

typedef struct ds_tensor {
    const char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    const uint8_t *data;   /* mapped bytes (read-only) */
    uint64_t nbytes;
    int file;              /* index of the file it lives in */
    uint64_t offset;       /* absolute byte offset of data in that file */
} ds_tensor;

typedef struct ds_tensor_table ds_tensor_table;

/* Opens a HF checkpoint directory: model.safetensors.index.json + shards, or
 * a single model.safetensors.  Every header is validated (JSON, dtype,
 * shape x dtype size == byte range, ranges inside the file, no overlaps,
 * index consistent with the shards).  Errors name file, tensor and problem. */
ds_status ds_table_open(const char *dir, ds_tensor_table **out, ds_error *err);
/* Opens one .safetensors file as a table (used by tests and tools). */
ds_status ds_table_open_file(const char *path, ds_tensor_table **out, ds_error *err);
void ds_table_free(ds_tensor_table *t);
/* Moves every file's bytes from the page cache into process memory (see
 * ds_mapped_to_ram) and repoints the tensors. */
ds_status ds_table_to_ram(ds_tensor_table *t, int drop_cache, ds_error *err);
/* Sum of the file sizes. */
uint64_t ds_table_bytes(const ds_tensor_table *t);
int ds_table_count(const ds_tensor_table *t);
const ds_tensor *ds_table_at(const ds_tensor_table *t, int i);
const ds_tensor *ds_table_find(const ds_tensor_table *t, const char *name);
int ds_table_file_count(const ds_tensor_table *t);
const char *ds_table_file_path(const ds_tensor_table *t, int file);

#endif
